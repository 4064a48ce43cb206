"""How good a density each method's energy is, on every 2-D toy whose density is known, over seeds.

    python bench/density_benchmark.py                 # every method x toy, 3 seeds (hours on a 2-core CPU)
    python bench/density_benchmark.py --quick         # a subset at a tenth of the iterations (a few minutes)
    python bench/density_benchmark.py --methods mle meg --datasets sevenaniso bands --seeds 5
    python bench/density_benchmark.py --report        # train nothing: tables and picture of the runs so far
    python bench/density_benchmark.py --scan-temperatures /tmp/density_benchmark_*   # KL by 1/T, no training
    python bench/density_benchmark.py --methods ddgm --set method.penalty_weight=0.01 --json /tmp/sweep.json
    python bench/density_benchmark.py --reevaluate /tmp/density_benchmark_*   # new metrics, no training

Every method (and the references: exact maximum likelihood, the ceiling, with log Z importance-sampled,
'mle', or summed on a randomly shifted grid, 'mle_grid', which has no proposal to miss the mass between
narrow modes and costs ~17 minutes a toy on 2 CPU cores; persistent contrastive divergence, the
MCMC-trained baseline) is trained with its default toy config (configs/METHOD.py:TOY)
and train.num_seeds = S replicas in one program, then evaluated as --mode=eval does
(ebm_jax/evaluation: the metric grid, docs/metrics.md). Printed and written to --json (default
bench/results/density_benchmark.json): per method x toy the mean +- std over seeds of
KL(data || model) of the density the method reports, exp(-E/T)/Z_T at its config's sampling.temperature
(1 but for the methods of ebm_jax/configlib.py's TOY_INVERSE_TEMPERATURE), at T = 1, and at the temperature
fitted by maximum likelihood on the training points (the energy fixed; the 1/T too), held-out NLL, modes covered and high-quality
fraction of generator and MCMC samples,
the mode-frequency KL of the generator's samples against the true weights (mixtures only),
KL(data || a KDE of the generator's and of the MCMC samples) beside the same for as many data draws (how
good a density the sampler is, against what a perfect one scores with that many samples), and the
wall seconds of the whole run (training of all seeds, compilation and evaluation). The picture
(--picture, default docs/images/density_benchmark.png) shows seed 0's learned density exp(-E/T)/Z for
every method (rows) and toy (columns), the data in the first row.

The benchmark is long on a CPU, so it is built to be run in parts: each finished run is added to
--json at once (with the machine, the commit and the date), seed 0's density grid is kept beside it
(JSON_grids/METHOD_DATASET.npz) for the picture, and a run already in --json with the same seeds and
steps is not repeated (--rerun repeats it). A run whose loss becomes non-finite is a row too ("diverged at
step N (seeds ...)": the seeds train in one program, so one seed's NaN stops them all), and the benchmark
goes on to the next run. The printed table shows the runs in --json among --methods x
--datasets; the Markdown (--markdown) and the picture show every run --json holds with the same seeds and
steps, however many invocations (or machines) produced them.

--set KEY=VALUE (repeatable) trains every requested run with that config field changed, for sweeping a
default before changing it; such runs record their settings and go to a --json of their own, never to
the default results file, whose rows are the defaults.

The runs' workdirs (checkpoints of every seed) stay under --workdir (default: a new temporary folder,
not removed), so that --reevaluate can evaluate them again when the evaluation gains a metric, and
--scan-temperatures can score their energies at other temperatures.
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import REPO, backend_line, load, print_table, set_field, write_json  # noqa: E402

METHODS = {"mle": "configs/mle.py", "mle_grid": "configs/mle.py", "pcd": "configs/pcd.py", "meg": "configs/meg.py",
           "ebm_bb": "configs/ebm_bb.py", "ebm_0gp": "configs/ebm_0gp.py", "wgan_0gp": "configs/wgan_0gp.py",
           "steincd": "configs/steincd.py", "cd": "configs/steincd.py", "steingan": "configs/steingan.py",
           "ddgm": "configs/ddgm.py", "triangle": "configs/triangle.py"}
EXTRA_TOKENS = {"cd": ",cd1", "mle_grid": ",grid"}
# --ceilings: each method's own toy energy network trained by exact maximum likelihood
# (configs/mle.py:TOY,net=NET), run under the name 'mle@NET': the ceiling of that network, which
# separates what an objective loses from what its network cannot represent. EBM-0GP and WGAN-0GP
# share EBM-BB's network; PCD's is mle's own, and the triangle's energy f(x, z) is not a network of x.
NETWORK_OF = {"meg": "meg", "ebm_bb": "ebm_bb", "ebm_0gp": "ebm_bb", "wgan_0gp": "ebm_bb", "steincd": "steincd",
              "cd": "cd", "steingan": "steingan", "ddgm": "ddgm"}
CEILINGS = tuple(f"mle@{n}" for n in dict.fromkeys(NETWORK_OF.values()))
DATASETS = ("25gaussians", "8gaussians", "sevenaniso", "bands", "swissroll", "checkerboard", "twospirals", "fourspin")
QUICK = dict(methods=("mle", "wgan_0gp", "ddgm"), datasets=("8gaussians", "sevenaniso"), steps_scale=0.1)
METRICS = ("kl_data_model", "t1/kl_data_model", "temperature", "fitted/kl_data_model", "fitted/inverse_temperature", "test_nll",
           "kl_off_modes", "kl_among_modes", "kl_within_modes", "fitted/kl_off_modes", "fitted/kl_among_modes",
           "fitted/kl_within_modes",
           "generator/modes_covered", "generator/high_quality_fraction", "mcmc/modes_covered",
           "mcmc/high_quality_fraction", "generator/mode_frequency_kl", "generator/kl_data_kde", "mcmc/kl_data_kde", "data/kl_data_kde")


def parse_settings(items):
    """['a.b=0.01', ...] -> {'a.b': 0.01}: Python literals where they parse, strings otherwise."""
    import ast
    out = {}
    for item in items or ():
        key, eq, text = item.partition("=")
        if not eq or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. method.penalty_weight=0.01")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key] = text
    return out


def spec_of(method, dataset):
    """configs/FILE.py:VARIANT of a benchmark run ('mle@NET': maximum likelihood of NET's network)."""
    if method.startswith("mle@"):
        return f"{METHODS['mle']}:{dataset},net={method[len('mle@'):]}"
    return f"{METHODS[method]}:{dataset}{EXTRA_TOKENS.get(method, '')}"


def settings_for(method, settings):
    """The --set settings a run takes: a ceiling run ('mle@NET') all but the method's own fields (method.*),
    so that a changed network or budget is measured against its own ceiling."""
    if method.startswith("mle@"):
        return {k: v for k, v in settings.items() if not k.startswith("method.")}
    return settings


def run_one(method, dataset, seeds, steps_scale, root, settings=None):
    from ebm_jax import train
    spec = spec_of(method, dataset)
    config = load(spec, {"train.num_seeds": seeds, "train.progress_bar": False, "eval.mcmc": True})
    for key, value in (settings or {}).items():
        try:
            known = set_field(config, key, value, missing_ok=True)
        except (TypeError, ValueError) as e:
            raise SystemExit(f"--set {key}={value!r}: {spec}'s field {key} takes another type ({e})")
        if not known:
            raise SystemExit(f"--set {key}={value!r}: {spec} has no field {key} (a mistyped name would be "
                             "ignored by the method)")
    steps = max(10, int(round(int(config.train.num_steps) * steps_scale)))
    if steps != int(config.train.num_steps):
        k = int(config.train.get("steps_per_call", 1))
        steps = max(k, steps // k * k)
        config.train.num_steps = steps
        config.train.checkpoint_every = steps
        config.train.eval_every = 0
    workdir = os.path.join(root, f"{method}_{dataset}")
    t0 = time.perf_counter()
    try:
        train.train_and_evaluate(config, workdir)
    except train.NonFiniteLossError as e:
        # a method that diverges on a toy is a result, not the end of the benchmark: the row says where
        # (the seeds train in one program, so one replica's NaN stops all of them) and the rest go on
        print(f"{method} on {dataset} diverged: {e}", file=sys.stderr, flush=True)
        return dict(method=method, dataset=dataset, spec=spec, steps=steps, seconds=time.perf_counter() - t0,
                    final={"num_seeds": seeds}, diverged={"step": e.step, "replicas": list(e.replicas)},
                    workdir=workdir)
    seconds = time.perf_counter() - t0
    with open(os.path.join(workdir, "eval_final.json")) as f:
        final = json.load(f)
    return dict(method=method, dataset=dataset, spec=spec, steps=steps, seconds=seconds, final=final,
                workdir=workdir)


def diverged_text(s):
    """'diverged at step N (seed i)' for a run that did, else ''."""
    d = s.get("diverged")
    if not d:
        return ""
    seeds = d.get("replicas") or []
    return f"diverged at step {d['step']}" + (f" (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
                                              if seeds else "")


def density_image(workdir, temperature=None, extent=2.0, size=120):
    """Seed 0's reported density exp(-E/T)/Z_T on the picture's grid, T the run's sampling.temperature."""
    import numpy as np

    import ebm_jax
    from ebm_jax.evaluation.toy2d import grid_log_density
    model = ebm_jax.load(workdir, seed=0)
    t = float(model.config.sampling.temperature if temperature is None else temperature)
    log_p, _ = grid_log_density(lambda x: model.energy(x), extent, size, t)
    return np.exp(log_p)


def grid_path(json_path, method, dataset):
    return os.path.join(os.path.splitext(json_path)[0] + "_grids", f"{method}_{dataset}.npz")


def save_grid(json_path, method, dataset, workdir, temperature=None):
    import numpy as np
    path = grid_path(json_path, method, dataset)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez_compressed(path, density=density_image(workdir, temperature).astype(np.float16))


def load_grid(json_path, method, dataset):
    import numpy as np
    path = grid_path(json_path, method, dataset)
    return np.load(path)["density"].astype(np.float32) if os.path.exists(path) else None


def picture(rows, methods, datasets, path, json_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ebm_jax.data.toys import get_toy
    from ebm_jax.evaluation.toy2d import grid_points
    by = {(r["method"], r["dataset"]): r for r in rows}
    # only the methods and toys that have a run: a part of the benchmark shows no empty rows
    methods = [m for m in methods if any((m, d) in by for d in datasets)]
    datasets = [d for d in datasets if any((m, d) in by for m in methods)]
    fig, axes = plt.subplots(len(methods) + 1, len(datasets), squeeze=False,
                             figsize=(max(1.6 * len(datasets), 3.2), 1.6 * (len(methods) + 1)))
    _, pts, _ = grid_points(2.0, 120)
    for j, d in enumerate(datasets):
        toy = get_toy(d)
        if toy.log_density is not None:
            data = np.exp(toy.log_density(pts).reshape(120, 120))
            axes[0, j].imshow(data, origin="lower", extent=[-2, 2, -2, 2], cmap="viridis")
        else:
            x = toy.sample(np.random.default_rng(0), 4000)
            axes[0, j].scatter(x[:, 0], x[:, 1], s=0.2, c="k")
            axes[0, j].set_xlim(-2, 2)
            axes[0, j].set_ylim(-2, 2)
        axes[0, j].set_title(d, fontsize=7)
        for i, m in enumerate(methods, start=1):
            ax = axes[i, j]
            r = by.get((m, d))
            grid = load_grid(json_path, m, d) if r is not None else None
            if grid is not None:
                ax.imshow(grid, origin="lower", extent=[-2, 2, -2, 2], cmap="viridis")
                ax.set_title(f"{r['kl_data_model']:.2f}", fontsize=6, pad=1)
            elif r is not None and r.get("diverged"):
                ax.set_title("diverged", fontsize=6, pad=1)
            if j == 0:
                ax.set_ylabel(m, fontsize=7)
    axes[0, 0].set_ylabel("data", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal")
    fig.suptitle("seed 0's exp(-E/T)/Z at each method's T\n(title: KL(data || model), nats)", fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))   # half an inch for the two-line title
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarise(r):
    f = r["final"]
    std = f.get("std", {})
    out = dict(method=r["method"], dataset=r["dataset"], spec=r["spec"], seeds=f.get("num_seeds", 1), steps=r["steps"],
               seconds=round(r["seconds"], 1))
    for k in METRICS:
        if k in f:
            out[k] = f[k]
            out[k + ":std"] = std.get(k, 0.0)
    with_t1(out)
    if "diverged" in r:
        out["diverged"] = r["diverged"]
        return out
    out["per_seed_kl"] = [m["kl_data_model"] for m in f.get("per_seed", [f])]
    if "fitted/kl_data_model" in f:
        out["per_seed_fitted_kl"] = [m["fitted/kl_data_model"] for m in f.get("per_seed", [f])]
    return out


def t1_kl(r):
    """KL(data || exp(-E)/Z) at T = 1 of a row or an evaluation (rows and runs before the reported
    temperature have only kl_data_model, at T = 1)."""
    return r.get("t1/kl_data_model", r.get("kl_data_model", float("nan")))


def find_runs(rows, methods, datasets, roots):
    """{(method, dataset): workdir} of the rows' runs among methods x datasets under the earlier --workdir
    folders `roots`. A workdir is taken for a row only if its final evaluation's KL(data || model) at T = 1
    is the row's own (to 1e-6; the grid metrics are deterministic), so that a later run of the same method
    and toy is never mistaken for the row's."""
    found = {}
    for d in datasets:
        for m in methods:
            row = rows.get((m, d))
            if row is None or "diverged" in row or "kl_data_model" not in row:
                continue
            for root in roots:
                workdir = os.path.join(root, f"{m}_{d}")
                if not os.path.exists(os.path.join(workdir, "eval_final.json")):
                    continue
                with open(os.path.join(workdir, "eval_final.json")) as f:
                    final = json.load(f)
                if final.get("num_seeds", 1) == row["seeds"] and abs(t1_kl(final) - t1_kl(row)) <= 1e-6:
                    found[(m, d)] = workdir
                    break
            else:
                print(f"{m:>9} {d:>12}: none of the {len(roots)} folders given holds this row's run", flush=True)
    return found


def reevaluate(rows, methods, datasets, roots, json_path):
    """Evaluate again, without training, the runs of `rows` among methods x datasets whose workdirs an
    earlier invocation left under one of `roots` (find_runs), with the method's current default evaluation
    and sampling settings (its reported temperature among them): for a metric or a setting changed after
    they trained. The row keeps its training provenance and gains 'evaluated' (commit, date)."""
    from ebm_jax import api
    for (m, d), workdir in find_runs(rows, methods, datasets, roots).items():
        row = rows[(m, d)]
        config = load(row["spec"], {"eval.mcmc": True})
        _, metrics = api.evaluate_checkpoint(workdir, config=config)
        if abs(t1_kl(metrics) - t1_kl(row)) > 1e-6:
            raise SystemExit(f"{workdir}: evaluated again, KL {t1_kl(metrics):.6f} at T = 1 is not the "
                             f"{t1_kl(row):.6f} it recorded; the evaluation is not reproducible")
        new = summarise(dict(method=m, dataset=d, spec=row["spec"], steps=row["steps"], seconds=row["seconds"],
                             final=metrics))
        rows[(m, d)] = {**row, **new, "evaluated": {k: v for k, v in provenance().items() if k != "backend"}}
        save_grid(json_path, m, d, workdir, float(config.sampling.temperature))
        write_json(json_path, dict(rows=sorted(rows.values(), key=lambda x: (x["dataset"], x["method"]))))
        print(f"{m:>9} {d:>12}: evaluated again from {workdir}", flush=True)


def provenance():
    """The machine, the commit (with '+changes' when the code in the checkout differs from it: the
    package, the configs and the benchmarks, not their results or the docs) and the date."""
    import datetime
    import subprocess
    try:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "--no-optional-locks", "status", "--porcelain",
                                "--untracked-files=no", "--", "ebm_jax", "configs", "bench", ":!bench/results"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        commit = commit + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return dict(backend=backend_line(), commit=commit, date=datetime.date.today().isoformat())


def with_t1(row):
    """A row evaluated at T = 1 (or before the reported temperature existed) has its KL as its
    't1/kl_data_model' too; the evaluation records that metric only where T != 1."""
    if "kl_data_model" in row and "t1/kl_data_model" not in row and row.get("temperature", 1.0) == 1.0:
        row["t1/kl_data_model"], row["t1/kl_data_model:std"] = row["kl_data_model"], row["kl_data_model:std"]
    return row


def read_rows(path):
    if path and os.path.exists(path):
        with open(path) as f:
            return [with_t1(r) for r in json.load(f).get("rows", [])]
    return []


def fmt(s, k, digits=3):
    if k not in s:
        return ""
    return f"{s[k]:.{digits}f} +- {s[k + ':std']:.{digits}f}"


def best_ml(rows, dataset, key="kl_data_model"):
    """The exact-maximum-likelihood run ('mle', 'mle_grid' or 'mle@NET') with the lowest mean KL (`key`) on
    `dataset`: the ceiling the targets are judged against, as every such run is a density some energy
    network reached."""
    found = [r for r in rows if r["dataset"] == dataset and r["method"].startswith("mle") and key in r]
    return min(found, key=lambda r: r[key]) if found else None


def ceiling_label(method):
    """Which network and normaliser an exact-ML run used: 'mle' -> 'default', 'mle_grid' -> 'default, grid',
    'mle@NET' -> 'NET'."""
    return {"mle": "default", "mle_grid": "default, grid"}.get(method, method.partition("@")[2])


def reported_temperature(by, method):
    """The T a method's runs report their density at (sampling.temperature), if one T other than 1."""
    temps = {r.get("temperature", 1.0) for (_, m), r in by.items() if m == method and "kl_data_model" in r}
    return temps.pop() if len(temps) == 1 and temps != {1.0} else None


def kl_matrix(by, methods, datasets, title="KL(data \\|\\| model)", best=False, key="kl_data_model"):
    """Markdown lines: a toy x method matrix of KL (`key`) mean +- std (the runs `by` holds; empty where
    none), with best=True a first column of the best exact-ML run of the toy (best_ml) and its network.
    For key='kl_data_model' a method whose runs report their density at T != 1 is headed 'NAME (1/T x)'."""
    has = lambda d, m: (d, m) in by and (key in by[(d, m)] or "diverged" in by[(d, m)])  # noqa: E731
    methods = [m for m in methods if any(has(d, m) for d in datasets)]
    datasets = [d for d in datasets if any(has(d, m) for m in methods)]
    bests = {d: best_ml(by.values(), d, key) for d in datasets} if best else {}
    best = any(b is not None for b in bests.values())   # no column without an ML run
    head = ["best ML (network)"] if best else []
    temps = {m: reported_temperature(by, m) for m in methods} if key == "kl_data_model" else {}
    names = [f"{m} (1/T {1 / temps[m]:.3g})" if temps.get(m) else m for m in methods]
    lines = [f"| {title} | " + " | ".join(head + names) + " |", "| --- |" + " --- |" * (len(head) + len(methods))]
    for d in datasets:
        cells = [(fmt(by[(d, m)], key, 2) or diverged_text(by[(d, m)])) if (d, m) in by else ""
                 for m in methods]
        if best:
            b = bests[d]
            cells = [f"{b[key]:.2f} ({ceiling_label(b['method'])})" if b else ""] + cells
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return lines


def split_matrix(by, methods, datasets, prefix=""):
    """Markdown lines: on the mixtures, each run's KL split into its mass off the components, its mass
    among them and its shape within them (toy2d.kl_split_by_region), means over the seeds, 'off + among +
    within'."""
    keys = [prefix + k for k in ("kl_off_modes", "kl_among_modes", "kl_within_modes")]
    has = lambda d, m: keys[0] in by.get((d, m), {})  # noqa: E731
    methods = [m for m in methods if any(has(d, m) for d in datasets)]
    datasets = [d for d in datasets if any(has(d, m) for m in methods)]
    title = "off + among + within" + (" at the fitted 1/T" if prefix else ", reported T")
    lines = [f"| {title} | " + " | ".join(methods) + " |", "| --- |" + " --- |" * len(methods)]
    for d in datasets:
        cells = [" + ".join(f"{by[(d, m)][k]:.2f}" for k in keys) if has(d, m) else "" for m in methods]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return lines


def markdown_tables(summary, table, columns, methods, datasets, ceilings=()):
    """KL mean +- std as a toy x method matrix (what the README shows), the same for the ceilings of the
    methods' own networks where they ran, then every column per run, then where each figure came from."""
    by = {(s["dataset"], s["method"]): s for s in summary}
    lines = kl_matrix(by, methods, datasets, best=True)
    tuned = [m for m in methods if reported_temperature(by, m)]
    if tuned:   # the methods whose reported density is at T != 1: their energies' own exp(-E)/Z too
        lines += [""] + kl_matrix(by, tuned, datasets, "KL at T = 1", best=True, key="t1/kl_data_model")
    if any("fitted/kl_data_model" in s for s in summary):   # the runs evaluated with a fitted temperature
        lines += [""] + kl_matrix(by, methods, datasets, "KL at the fitted 1/T", best=True, key="fitted/kl_data_model")
    if any(m in ceilings for _, m in by):
        lines += [""] + kl_matrix(by, ceilings, datasets, "exact ML of the network of")
    if any("kl_off_modes" in s for s in summary):   # the mixtures' runs evaluated with the split
        for prefix in ("", "fitted/"):
            lines += [""] + split_matrix(by, list(methods) + [m for m in ceilings if m not in methods], datasets, prefix)
    cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731  (a '|' inside a cell would end it)
    lines += ["", "| " + " | ".join(map(cell, columns)) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in table]
    made = {}
    for s in summary:
        key = (s.get("backend", ""), s.get("date", ""), s["seeds"], s.get("steps_scale", 1.0))
        made.setdefault(key, set()).add(s.get("commit", ""))
    lines += [""] + [f"Measured with {b}, {t}: {n} seeds, steps x {k:g}; commits {', '.join(sorted(c))} (each row's "
                     "in the JSON)." for (b, t, n, k), c in sorted(made.items())]
    again = [s["evaluated"] for s in summary if "evaluated" in s]
    if again:
        lines.append(f"{len(again)} of the rows evaluated again from their checkpoints (--reevaluate) at commits "
                     f"{', '.join(sorted({e.get('commit', '') for e in again}))}, "
                     f"{', '.join(sorted({e.get('date', '') for e in again}))}.")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", type=int, default=3, help="replicas per run (train.num_seeds)")
    parser.add_argument("--steps_scale", type=float, default=1.0, help="multiply every config's num_steps")
    parser.add_argument("--quick", action="store_true", help=f"the subset {QUICK}")
    parser.add_argument("--ceilings", action="store_true", help="also train each requested method's own energy "
                        "network by exact maximum likelihood (runs named mle@NET, configs/mle.py:TOY,net=NET)")
    parser.add_argument("--workdir", default="", help="where the runs go (default: a temporary directory)")
    parser.add_argument("--rerun", action="store_true", help="repeat runs that --json already holds")
    parser.add_argument("--reevaluate", nargs="+", default=None, metavar="DIR", help="train nothing: evaluate "
                        "again the runs --json holds (among --methods x --datasets) from their workdirs under these "
                        "earlier --workdir folders, for a metric added since")
    parser.add_argument("--report", action="store_true", help="train nothing: the table, Markdown and picture "
                        "of the runs --json holds")
    parser.add_argument("--scan-temperatures", nargs="+", default=None, metavar="DIR", help="train nothing: "
                        "print each run's KL(data || exp(-E/T)/Z_T) over a range of 1/T, from its checkpoints under "
                        "these --workdir folders, and each method's mean over the toys (how the methods' reported "
                        "temperatures were chosen)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="train with this "
                        "config field changed (repeatable; needs a --json other than the default)")
    parser.add_argument("--json", default=None, help="the results file to add to (default bench/results/"
                        "density_benchmark.json; with --quick, density_benchmark_quick.json)")
    parser.add_argument("--markdown", default=None, help="the tables as Markdown (default: --json with .md)")
    parser.add_argument("--picture", default=None, help="default docs/images/density_benchmark.png for the "
                        "default --json, else --json with .png")
    args = parser.parse_args()
    methods, datasets, scale = args.methods, args.datasets, args.steps_scale
    if args.quick:
        methods, datasets, scale = list(QUICK["methods"]), list(QUICK["datasets"]), QUICK["steps_scale"]
    results = os.path.join(REPO, "bench", "results")
    settings = parse_settings(args.set)
    default_json = os.path.join(results, "density_benchmark.json")
    if settings and (args.json is None or os.path.abspath(args.json) == default_json):
        raise SystemExit("--set trains non-default configs: give them a --json of their own (the default "
                         f"{os.path.relpath(default_json, REPO)} holds the defaults' rows only)")
    if args.json is None:
        args.json = os.path.join(results, "density_benchmark_quick.json") if args.quick else default_json
    if args.picture is None:   # the docs' picture shows the default results file only
        args.picture = (os.path.join(REPO, "docs", "images", "density_benchmark.png")
                        if os.path.abspath(args.json) == default_json else os.path.splitext(args.json)[0] + ".png")
    root = args.workdir or tempfile.mkdtemp(prefix="density_benchmark_")
    # one row per method x toy: a new run of either replaces the old one
    rows = {(r["method"], r["dataset"]): r for r in read_rows(args.json)}

    def same_run(r):
        return (r is not None and r.get("seeds") == args.seeds and r.get("steps_scale", 1.0) == scale
                and r.get("settings", {}) == settings_for(r["method"], settings))

    if args.ceilings:
        methods = methods + [c for c in dict.fromkeys(f"mle@{NETWORK_OF[m]}" for m in methods if m in NETWORK_OF)]
    if args.scan_temperatures:
        scan_temperatures(rows, methods, datasets, args.scan_temperatures)
        return
    if args.reevaluate:
        reevaluate(rows, methods, datasets, args.reevaluate, args.json)
        args.report = True
    for d in datasets:
        for m in methods:
            if args.report or (same_run(rows.get((m, d))) and not args.rerun):
                continue
            own = settings_for(m, settings)
            r = run_one(m, d, args.seeds, scale, root, own)
            s = {**summarise(r), "steps_scale": scale, **({"settings": own} if own else {}), **provenance()}
            rows[(m, d)] = s
            if args.json:   # saved after every run: an interrupted benchmark keeps what it finished
                if "diverged" in s:   # no trained model to draw; an older run's grid would be taken for it
                    if os.path.exists(grid_path(args.json, m, d)):
                        os.remove(grid_path(args.json, m, d))
                else:
                    save_grid(args.json, m, d, r["workdir"])
                write_json(args.json, dict(rows=sorted(rows.values(), key=lambda x: (x["dataset"], x["method"]))))
            print(f"{m:>9} {d:>12}: " + (diverged_text(s) or f"KL {fmt(s, 'kl_data_model')}") + f"  ({s['seconds']} s)",
                  flush=True)
    # the printed table: the runs among --methods x --datasets; the Markdown and the picture: every run the
    # JSON holds, so that an invocation for a part of the benchmark does not drop the other rows from them
    summary = [rows[(m, d)] for d in datasets for m in methods if same_run(rows.get((m, d)))]
    written = [rows[(m, d)] for d in DATASETS for m in list(METHODS) + list(CEILINGS) if same_run(rows.get((m, d)))]
    print(backend_line())
    columns, table = summary_table(summary, written)
    print_table(table, columns)
    markdown = args.markdown or (os.path.splitext(args.json)[0] + ".md" if args.json else "")
    if markdown and written:
        with open(markdown, "w") as f:
            columns, table = summary_table(written, written)
            f.write(markdown_tables(written, table, columns, list(METHODS), list(DATASETS), list(CEILINGS)))
        print(f"wrote {markdown}")
    if args.picture and args.json and written:
        picture(written, list(METHODS), list(DATASETS), args.picture, args.json)
        print(f"wrote {args.picture}")


# the 1/T the reported temperatures were chosen among (ebm_jax/configlib.py, TOY_INVERSE_TEMPERATURE)
INVERSE_TEMPERATURES = tuple(round(0.6 + 0.1 * i, 1) for i in range(25)) + (3.5, 4.0, 5.0)


def scan_temperatures(rows, methods, datasets, roots):
    """For each run of `rows` found under `roots` (find_runs): the mean over its seeds of KL(data ||
    exp(-E/T)/Z_T) of its energy E (not of its reported density) on the metric grid, at each 1/T of
    INVERSE_TEMPERATURES; per method, the mean over the toys it ran on and the 1/T that minimises it.
    This is how each method's reported temperature was chosen: one per method, never per toy. Printed as
    a table; returns {method: (best 1/T, mean at T = 1, mean at the best)}."""
    import numpy as np

    import ebm_jax
    from ebm_jax.data.toys import get_toy
    from ebm_jax.evaluation.toy2d import (batched, grid_points, histogram_log_density, kl_on_grid, metric_grid,
                                          normalised_on_grid)
    kl = {}
    for (m, d), workdir in find_runs(rows, methods, datasets, roots).items():
        first = ebm_jax.load(workdir)
        r, n = metric_grid(2.0, int(first.config.eval.grid_size), float(first.config.eval.get("grid_extent", 0.0)))
        _, pts, area = grid_points(r, n)
        toy = get_toy(d)
        log_p = toy.log_density(pts).reshape(n, n) if toy.log_density is not None else histogram_log_density(toy.sample, r, n)
        per_seed = []
        for seed in range(rows[(m, d)]["seeds"]):
            energy = batched((first if seed == 0 else ebm_jax.load(workdir, seed=seed)).energy, pts)
            per_seed.append([kl_on_grid(log_p, normalised_on_grid(energy, area, b)[0]) for b in INVERSE_TEMPERATURES])
        kl[(m, d)] = np.mean(per_seed, axis=0)
    table, best = [], {}
    for m in methods:
        toys = [d for d in datasets if (m, d) in kl]
        if not toys:
            continue
        for d in toys:
            table.append({"method": m, "toy": d, **{f"{b:g}": f"{v:.3f}" for b, v in zip(INVERSE_TEMPERATURES, kl[(m, d)])}})
        mean = np.mean([kl[(m, d)] for d in toys], axis=0)
        i = int(np.argmin(mean))
        table.append({"method": m, "toy": f"mean of {len(toys)}",
                      **{f"{b:g}": f"{v:.3f}" for b, v in zip(INVERSE_TEMPERATURES, mean)}})
        best[m] = (INVERSE_TEMPERATURES[i], float(mean[INVERSE_TEMPERATURES.index(1.0)]), float(mean[i]))
    print_table(table, ["method", "toy"] + [f"{b:g}" for b in INVERSE_TEMPERATURES],
                title="KL(data || exp(-E/T)/Z_T) of each run's energy, mean over its seeds, by 1/T")
    for m, (b, at_one, at_best) in best.items():
        print(f"{m:>9}: mean over its toys {at_one:.3f} at 1/T = 1, {at_best:.3f} at 1/T = {b:g}", flush=True)
    return best


def summary_table(summary, references=None):
    """One row per run: its metrics' mean +- std over seeds, the gap to the toy's best exact-ML run among
    `references` (default: `summary`) and to the ML run of the method's own network."""
    references = list(summary if references is None else references)
    kl = {(s["dataset"], s["method"]): s["kl_data_model"] for s in references if "kl_data_model" in s}
    best = {d: best_ml(references, d) for d in {s["dataset"] for s in summary}}
    columns = ["toy", "method", "KL(data||model)", "- best ML", "- own net", "KL fitted T", "1/T fitted",
               "held-out NLL", "modes gen", "HQ gen",
               "modes MCMC", "HQ MCMC", "mode-freq KL gen", "KDE KL gen", "KDE KL MCMC", "KDE KL data", "wall s"]
    table = []

    def gap(s, reference):
        base = kl.get((s["dataset"], reference))
        return "" if base is None or "kl_data_model" not in s or reference == s["method"] else f"{s['kl_data_model'] - base:+.3f}"

    for s in summary:
        b = best[s["dataset"]]
        values = [s["dataset"], s["method"], fmt(s, "kl_data_model") or diverged_text(s),
                  gap(s, b["method"]) if b is not None else "",
                  gap(s, f"mle@{NETWORK_OF[s['method']]}") if s["method"] in NETWORK_OF else "",
                  fmt(s, "fitted/kl_data_model"), fmt(s, "fitted/inverse_temperature", 2), fmt(s, "test_nll"),
                  fmt(s, "generator/modes_covered", 1), fmt(s, "generator/high_quality_fraction", 2),
                  fmt(s, "mcmc/modes_covered", 1), fmt(s, "mcmc/high_quality_fraction", 2),
                  fmt(s, "generator/mode_frequency_kl"), fmt(s, "generator/kl_data_kde", 2),
                  fmt(s, "mcmc/kl_data_kde", 2), (f"{s['data/kl_data_kde']:.2f}" if "data/kl_data_kde" in s else ""), f"{s['seconds']:.0f}"]
        table.append(dict(zip(columns, values)))
    return columns, table


if __name__ == "__main__":
    main()
