"""bench/density_benchmark.py is run in parts: each finished run is added to its JSON at once with seed
0's density grid beside it, and a later invocation does not repeat a run the JSON already holds."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, apply_overrides, grid_kl

SCRIPT = os.path.join(REPO, "bench", "density_benchmark.py")


def run(tmp_path, *methods):
    cmd = [sys.executable, SCRIPT, "--methods", *methods, "--datasets", "sevenaniso", "--seeds", "2",
           "--steps_scale", "0.0001", "--json", str(tmp_path / "r.json"), "--picture", str(tmp_path / "p.png"),
           "--workdir", str(tmp_path / "runs")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_benchmark_adds_runs_and_does_not_repeat_them(tmp_path):
    out = run(tmp_path, "mle")
    assert "mle   sevenaniso: KL" in out
    first = json.load(open(tmp_path / "r.json"))["rows"]
    assert [(r["method"], r["dataset"], r["seeds"]) for r in first] == [("mle", "sevenaniso", 2)]
    assert len(first[0]["per_seed_kl"]) == 2 and first[0]["commit"] and first[0]["backend"].startswith("backend")
    assert os.path.exists(tmp_path / "r_grids" / "mle_sevenaniso.npz") and os.path.exists(tmp_path / "p.png")
    # a second invocation with one more method trains only that one and keeps the first row as it was
    out = run(tmp_path, "mle", "steincd")
    assert "steincd   sevenaniso: KL" in out and "mle   sevenaniso: KL" not in out
    rows = {r["method"]: r for r in json.load(open(tmp_path / "r.json"))["rows"]}
    assert set(rows) == {"mle", "steincd"} and rows["mle"] == first[0]
    assert "- best ML" in out   # the table has the gap to the best exact-ML ceiling
    # the Markdown beside the JSON: the toy x method KL matrix with both runs, then the full table
    md = open(tmp_path / "r.md").read().splitlines()
    # SteinCD reports its density at its default toy temperature (configs/steincd.py), exact ML at T = 1
    assert rows["steincd"]["temperature"] == pytest.approx(1 / 1.8) and rows["mle"]["temperature"] == 1.0
    assert md[0] == "| KL(data \\|\\| model) | best ML (network) | mle | steincd (1/T 1.8) |"
    kl = {m: f"{r['kl_data_model']:.2f} +- {r['kl_data_model:std']:.2f}" for m, r in rows.items()}
    assert md[2] == f"| sevenaniso | {rows['mle']['kl_data_model']:.2f} (default) | {kl['mle']} | {kl['steincd']} |"
    # then the methods at T != 1 at T = 1, against the ceiling's KL at T = 1
    assert md[4] == "| KL at T = 1 | best ML (network) | steincd |"
    t1 = rows["steincd"]["t1/kl_data_model"]
    assert md[6] == f"| sevenaniso | {rows['mle']['kl_data_model']:.2f} (default) | {t1:.2f} +- {rows['steincd']['t1/kl_data_model:std']:.2f} |"
    assert rows["mle"]["t1/kl_data_model"] == rows["mle"]["kl_data_model"] and abs(t1 - rows["steincd"]["kl_data_model"]) > 1e-3
    # then the same matrix at the temperature each seed's energy was fitted to on its training points
    assert md[8] == "| KL at the fitted 1/T | best ML (network) | mle | steincd |"
    fit = {m: f"{r['fitted/kl_data_model']:.2f} +- {r['fitted/kl_data_model:std']:.2f}" for m, r in rows.items()}
    assert md[10].endswith(f"| {fit['mle']} | {fit['steincd']} |") and len(rows["mle"]["per_seed_fitted_kl"]) == 2
    # then, on a mixture, the KL split into the mass off and among the components and the shape within
    # them (seed means, adding up to the KL), at the reported T and at the fitted temperature
    parts = lambda r, prefix="": [r[prefix + k] for k in ("kl_off_modes", "kl_among_modes", "kl_within_modes")]  # noqa: E731
    assert md[12] == "| off + among + within, reported T | mle | steincd |"
    assert md[14] == "| sevenaniso | " + " | ".join(" + ".join(f"{v:.2f}" for v in parts(rows[m])) for m in ("mle", "steincd")) + " |"
    assert md[16] == "| off + among + within at the fitted 1/T | mle | steincd |"
    for r in rows.values():
        assert sum(parts(r)) == pytest.approx(r["kl_data_model"], abs=1e-6)
        assert sum(parts(r, "fitted/")) == pytest.approx(r["fitted/kl_data_model"], abs=1e-6)
    # an invocation for a part (here one method, already run) still writes every run to the Markdown
    out = run(tmp_path, "steincd")
    assert ": KL" not in out
    assert open(tmp_path / "r.md").read().splitlines()[:3] == md[:3]
    # --report trains nothing, even for a method without a run, and reports the runs there are
    out = run(tmp_path, "mle", "steincd", "cd", "--report")
    assert ": KL" not in out and "- best ML" in out
    # --scan-temperatures: each run's KL(data || exp(-E/T)/Z_T) of its energy, mean over its seeds, here
    # written afresh at 1/T = 2 from the two seeds' energies on the metric grid ([-4, 4]^2 at the picture's
    # cell size), and the method's mean over its toys
    import numpy as np
    import ebm_jax
    out = run(tmp_path, "mle", "steincd", "--scan-temperatures", str(tmp_path / "runs"))
    workdir = str(tmp_path / "runs" / "mle_sevenaniso")
    expect = [grid_kl("sevenaniso", ebm_jax.load(workdir, seed=seed).energy,
                      ebm_jax.load(workdir).config.eval.grid_size, 2.0) for seed in (0, 1)]
    line = next(x for x in out.splitlines() if x.split()[:2] == ["mle", "sevenaniso"])
    assert float(line.split()[2 + 14]) == pytest.approx(np.mean(expect), rel=1e-3)   # 1/T = 0.6 + 0.1 x 14
    assert "steincd: mean over its toys" in out and ": KL" not in out
    assert json.load(open(tmp_path / "r.json"))["rows"] == sorted(rows.values(), key=lambda r: r["method"])
    # --reevaluate restores a metric a row lacks from the run's checkpoint, and takes no workdir whose
    # run is not the row's (here steincd's row claims another KL than its workdir's run)
    edited = {**rows["mle"]}
    for k in ("fitted/kl_data_model", "fitted/kl_data_model:std", "per_seed_fitted_kl"):
        del edited[k]
    wrong = {**rows["steincd"], "t1/kl_data_model": rows["steincd"]["t1/kl_data_model"] + 0.5}
    json.dump({"rows": [edited, wrong]}, open(tmp_path / "r.json", "w"))
    out = run(tmp_path, "mle", "steincd", "--reevaluate", str(tmp_path / "runs"))
    assert "mle   sevenaniso: evaluated again" in out and "steincd   sevenaniso: none of the 1 folders given holds" in out and ": KL" not in out
    again = {r["method"]: r for r in json.load(open(tmp_path / "r.json"))["rows"]}
    assert again["steincd"] == wrong and again["mle"]["evaluated"]["commit"]
    for k in ("fitted/kl_data_model", "fitted/inverse_temperature", "per_seed_fitted_kl", "kl_data_model", "test_nll"):
        assert again["mle"][k] == pytest.approx(rows["mle"][k], abs=1e-9)


def test_set_trains_a_changed_config_into_its_own_results_file(tmp_path):
    def bench(*args):
        return subprocess.run([sys.executable, SCRIPT, "--methods", "mle", "--datasets", "sevenaniso", "--seeds", "1",
                               "--workdir", str(tmp_path / "runs"), *args], capture_output=True, text=True,
                              timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    # the default results file holds the defaults' rows only, and a mistyped field is named, not ignored
    r = bench("--set", "train.num_steps=20")
    assert r.returncode != 0 and "give them a --json of their own" in r.stderr
    r = bench("--set", "train.num_stepz=20", "--json", str(tmp_path / "s.json"))
    assert r.returncode != 0 and "has no field train.num_stepz" in r.stderr
    assert not os.path.exists(tmp_path / "s.json")
    r = bench("--set", "train.num_steps=20", "--json", str(tmp_path / "s.json"))
    assert r.returncode == 0, r.stderr[-3000:]
    (row,) = json.load(open(tmp_path / "s.json"))["rows"]
    assert row["steps"] == 20 and row["settings"] == {"train.num_steps": 20}   # the value reached the config
    assert os.path.exists(tmp_path / "s.png")   # the picture goes beside that file, not into the docs
    # the same file asked for the defaults does not take the changed run for them
    r = bench("--json", str(tmp_path / "s.json"), "--report")
    assert r.returncode == 0 and "sevenaniso  mle" not in r.stdout


def test_a_diverging_run_is_recorded_and_the_benchmark_goes_on(tmp_path):
    """A run whose loss becomes non-finite (here Adam at lr 1e30) is a row that says where, in the JSON,
    the tables and the picture, and the runs after it still train."""
    import numpy as np
    stale = tmp_path / "d_grids" / "mle_sevenaniso.npz"   # an older run's grid must not be drawn for it
    stale.parent.mkdir()
    np.savez_compressed(stale, density=np.ones((120, 120), np.float16))
    r = subprocess.run([sys.executable, SCRIPT, "--methods", "mle", "cd", "--datasets", "sevenaniso", "--seeds", "2",
                        "--set", "train.num_steps=20", "--set", "optim.lr=1e30", "--json", str(tmp_path / "d.json"),
                        "--workdir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mle on sevenaniso diverged: the training loss or state became non-finite" in r.stderr
    rows = {row["method"]: row for row in json.load(open(tmp_path / "d.json"))["rows"]}
    assert set(rows) == {"mle", "cd"}   # the second run trained after the first diverged
    for row in rows.values():
        assert row["diverged"]["replicas"] == [0, 1] and 0 <= row["diverged"]["step"] < 20
        assert "kl_data_model" not in row and "per_seed_kl" not in row
    step = rows["mle"]["diverged"]["step"]
    assert f"mle   sevenaniso: diverged at step {step} (seeds 0, 1)" in r.stdout
    md = open(tmp_path / "d.md").read().splitlines()
    assert md[2].startswith(f"| sevenaniso | diverged at step {step} (seeds 0, 1) |")
    assert os.path.exists(tmp_path / "d.png") and not stale.exists()


def test_ceilings_train_each_methods_own_network_by_exact_likelihood(tmp_path):
    """--ceilings adds, per method, maximum likelihood of that method's own energy network (mle@NET,
    configs/mle.py:TOY,net=NET), which takes the --set settings but the method's own; the table gives
    each method's gap to it and the Markdown a matrix of the ceilings."""
    r = subprocess.run([sys.executable, SCRIPT, "--methods", "steincd", "--datasets", "sevenaniso", "--seeds", "1",
                        "--ceilings", "--set", "train.num_steps=20", "--set", "model.energy.quadratic=0.25",
                        "--set", "eval.grid_size=60", "--set", "eval.num_samples=200",
                        "--set", "method.step_size=0.05", "--json", str(tmp_path / "c.json"),
                        "--workdir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {row["method"]: row for row in json.load(open(tmp_path / "c.json"))["rows"]}
    assert set(rows) == {"steincd", "mle@steincd"}
    ceiling = rows["mle@steincd"]
    assert ceiling["spec"] == "configs/mle.py:sevenaniso,net=steincd"
    # all but the method's own fields (mle has no method.step_size)
    assert ceiling["settings"] == {"train.num_steps": 20, "model.energy.quadratic": 0.25, "eval.grid_size": 60,
                                   "eval.num_samples": 200}
    assert ceiling["steps"] == 20
    assert rows["steincd"]["settings"]["method.step_size"] == 0.05
    from ebm_jax import api
    _, _, config, _ = api.restore(str(tmp_path / "runs" / "mle@steincd_sevenaniso"))
    energy = config.model.energy
    assert config.method.name == "mle" and energy.spectral_norm and energy.activation == "leaky_relu"
    assert energy.quadratic == 0.25
    gap = rows["steincd"]["kl_data_model"] - ceiling["kl_data_model"]
    line = next(x for x in r.stdout.splitlines() if x.startswith("sevenaniso") and x.split()[1] == "steincd")
    assert f"{gap:+.3f}" in line.split()
    md = open(tmp_path / "c.md").read().splitlines()
    assert "| exact ML of the network of | mle@steincd |" in md


def test_gaps_are_to_the_best_exact_likelihood_run_of_the_toy():
    """'- best ML' subtracts the lowest mean KL among the toy's exact-ML runs (the default network's with
    either normaliser, or any method's own, 'mle@NET'), '- own net' the method's own network's, and other
    toys do not count."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("density_benchmark_module", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def row(method, dataset, kl):
        return {"method": method, "dataset": dataset, "kl_data_model": kl, "kl_data_model:std": 0.0, "seconds": 1.0,
                "seeds": 3}
    rows = [row("mle", "bands", 0.5), row("mle@steingan", "bands", 0.25), row("mle@meg", "bands", 0.75),
            row("mle@cd", "fourspin", 0.0625), row("steingan", "bands", 1.0), row("meg", "bands", 2.0),
            row("pcd", "bands", 0.125)]   # PCD below every ML run: a run that is not ML is no ceiling
    assert bench.best_ml(rows, "bands")["method"] == "mle@steingan"
    columns, table = bench.summary_table(rows[4:6], rows)
    got = {r["method"]: (r["- best ML"], r["- own net"]) for r in table}
    assert got == {"steingan": ("+0.750", "+0.750"), "meg": ("+1.750", "+1.250")}
    md = bench.markdown_tables(rows, table, columns, ["mle", "steingan", "meg"], ["bands"])
    assert md.splitlines()[2].startswith("| bands | 0.25 (steingan) | 0.50 +- 0.00 |")
    # the grid-normalised run is a ceiling too, named as the default network's with its normaliser
    rows.append(row("mle_grid", "bands", 0.1875))
    assert bench.best_ml(rows, "bands")["method"] == "mle_grid"
    columns, table = bench.summary_table(rows[4:6], rows)
    assert table[0]["- best ML"] == "+0.812"
    md = bench.markdown_tables(rows, table, columns, ["mle", "mle_grid", "steingan"], ["bands"])
    assert md.splitlines()[2].startswith("| bands | 0.19 (default, grid) | 0.50 +- 0.00 | 0.19 +- 0.00 |")


def test_mode_weights_of_a_steingan_run(tmp_path):
    """bench/mode_weights.py: the energy's mass per component and the generator's mode frequencies of each
    replica, against the same written here with numpy (the grid, the 4-std regions, nearest centres)."""
    import jax
    import numpy as np
    import ebm_jax
    from ebm_jax import configlib, train
    from ebm_jax.data import get_toy
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import mode_weights

    config = apply_overrides(configlib.load_config(os.path.join(REPO, "configs", "steingan.py") + ":8gaussians"),
                             {"data.batch_size": 32, "data.num_train": 2000, "data.num_test": 500, "train.num_steps": 4,
                              "train.num_seeds": 2, "train.progress_bar": False, "eval.grid_size": 40,
                              "eval.num_samples": 100, "model.energy.hidden": (16, 16)})
    train.train_and_evaluate(config, str(tmp_path))
    model = ebm_jax.load(str(tmp_path), seed=1)
    w, q, g = mode_weights.mode_weights(model, 500, jax.random.PRNGKey(3))

    toy = get_toy("8gaussians")
    axis = -4.0 + 0.1 * (np.arange(80) + 0.5)   # the metric grid: twice the square [-2, 2]^2, cells of 4 / 40
    pts = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2).astype(np.float32)
    e = np.asarray(model.energy(pts), np.float64)
    dist = np.linalg.norm(pts[:, None, :] - toy.centers[None], axis=-1) / toy.std
    mass = np.exp(-(e - e.min()))
    want_q = np.array([mass[(dist.argmin(1) == k) & (dist.min(1) < 4.0)].sum() for k in range(8)])
    x = np.asarray(model.sample(jax.random.PRNGKey(3), 500))
    want_g = np.bincount(np.linalg.norm(x[:, None, :] - toy.centers[None], axis=-1).argmin(1), minlength=8) / 500
    np.testing.assert_allclose(q, want_q / want_q.sum(), rtol=1e-5)
    np.testing.assert_allclose(g, want_g)
    np.testing.assert_allclose(w, np.full(8, 0.125))
    out = subprocess.run([sys.executable, os.path.join(REPO, "bench", "mode_weights.py"), str(tmp_path), "--samples", "200"],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "seed 0: corr(log Q/w, log g/w)" in out.stdout and "seed 1: corr" in out.stdout


def test_reported_temperatures_apply_to_the_toy_defaults_only():
    """Each method's toy configs report exp(-E/T) at the 1/T chosen for it (one for all toys), its ':paper'
    variants and real data at T = 1, and the methods not tuned at T = 1 everywhere."""
    from ebm_jax import configlib
    from ebm_jax.data.toys import TOYS
    tuned = configlib.TOY_INVERSE_TEMPERATURE
    specs = {m: os.path.join(REPO, "configs", f"{'steincd' if m == 'cd' else m}.py")
             for m in ("steingan", "steincd", "cd", "pcd", "ebm_bb", "ebm_0gp", "wgan_0gp", "ddgm", "meg", "triangle", "mle")}
    for method, path in specs.items():
        for toy in TOYS:
            config = configlib.load_config(f"{path}:{toy}" + (",cd1" if method == "cd" else ""))
            assert config.method.name == method
            assert config.sampling.temperature == pytest.approx(1.0 / tuned.get(method, 1.0)), (method, toy)
    assert set(tuned) == {"steingan", "steincd", "pcd", "ebm_bb", "wgan_0gp", "ddgm"}
    for spec in ("ebm_bb.py:8gaussians,paper", "wgan_0gp.py:8gaussians,paper", "ddgm.py:fourspin,paper",
                 "ddgm.py:mnist", "steingan.py:mnist", "ebm_bb.py:mnist"):
        assert configlib.load_config(os.path.join(REPO, "configs", spec)).sampling.temperature == 1.0, spec
