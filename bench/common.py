"""Helpers the benchmarks share: configs by spec, random stand-in data, timing, XLA's cost and memory
figures of a compiled call, and a text table. Imported by the scripts in bench/ (not part of ebm_jax)."""
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ebm_jax import configlib  # noqa: E402


def load(spec: str, overrides=None):
    """configs/FILE.py[:VARIANT] relative to the repository, with {'section.field': value} overrides."""
    path, _, variant = spec.partition(":")
    config = configlib.load_config(os.path.join(REPO, path) + (":" + variant if variant else ""))
    for key, value in (overrides or {}).items():
        set_field(config, key, value)
    return config


def set_field(config, key: str, value, missing_ok: bool = False) -> bool:
    """config['a']['b']['c'] = value for key 'a.b.c'; with missing_ok a path the config does not have
    is left alone and False returned."""
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
        if missing_ok and not (hasattr(node, "get") and p in node):
            return False
        node = node[p]
    if missing_ok and not (hasattr(node, "get") and leaf in node):
        return False
    node[leaf] = value
    return True


def random_dataset(shape, n_train=2048, n_test=256, seed=0):
    """Uniform [-1, 1] stand-in data of `shape` per example (speed does not depend on the pixels)."""
    from ebm_jax.data.datasets import Dataset
    x = np.random.default_rng(seed).uniform(-1, 1, (n_train + n_test,) + tuple(shape)).astype(np.float32)
    return Dataset("random", x[:n_train], x[n_train:], seed)


def compiled_figures(compiled):
    """XLA's FLOP count and memory figures of a compiled call (what its cost and memory analyses give)."""
    out = {"gflop": None, "peak_mib": None}
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        out["gflop"] = float(cost.get("flops", 0.0)) / 1e9
    except Exception:  # some backends give no cost analysis
        pass
    try:
        m = compiled.memory_analysis()
        # arguments + outputs + temporaries, minus the outputs that reuse donated argument buffers
        peak = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
        out["peak_mib"] = peak / 2 ** 20
    except Exception:
        pass
    return out


def device_peak_mib():
    """The device allocator's peak, where the backend reports one (GPU, TPU); None on CPU."""
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2 ** 20


def time_calls(call, min_calls=3, min_seconds=2.0, rounds=3):
    """Median over `rounds` of the mean seconds per call, each round at least min_calls calls and
    min_seconds long. `call()` must block until its work is done."""
    call()
    t0 = time.perf_counter()
    call()
    once = max(time.perf_counter() - t0, 1e-6)
    n = max(min_calls, int(min_seconds / once))
    per_round = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            call()
        per_round.append((time.perf_counter() - t0) / n)
    return statistics.median(per_round)


def compile_run(trainer, state):
    """Compile the program Trainer.run calls from step 0 (the several-step one when steps_per_call > 1):
    (compile seconds, its compiled_figures). The 'gflop' entry is ONE iteration's: XLA's cost analysis
    counts a loop body once, so it comes from the one-step program, compiled apart when needed."""
    t0 = time.perf_counter()
    compiled = trainer.lower(state, trainer.steps_per_call)
    compile_s = time.perf_counter() - t0
    figures = compiled_figures(compiled)   # memory of the program that runs
    if trainer.steps_per_call > 1:
        figures["gflop"] = compiled_figures(trainer.lower(state, 1))["gflop"]
    return compile_s, figures


def seconds_per_iteration(trainer, state, min_seconds, min_calls=3):
    """Seconds per iteration as the training loop runs it (Trainer.run: host batches, their transfer, the
    compiled call), after a warm-up; time_calls' median. Consumes `state` (donated)."""
    box = {"state": state, "step": 0}

    def call():
        box["state"], _, k = trainer.run(box["state"], box["step"], 10 ** 9)
        box["step"] += k
        jax.block_until_ready(box["state"])

    return time_calls(call, min_calls=min_calls, min_seconds=min_seconds) / trainer.steps_per_call


def matmul_gflops(shapes=((256, 256, 256), (512, 512, 512), (1024, 1024, 1024))):
    """The best float32 rate of a jitted (m, k) @ (k, n) product over `shapes` (m, k, n), in GFLOP/s,
    measured now."""
    import jax.numpy as jnp
    best = 0.0
    for m, k, n in shapes:
        a = jax.random.normal(jax.random.PRNGKey(0), (m, k), jnp.float32)
        b = jax.random.normal(jax.random.PRNGKey(1), (k, n), jnp.float32)
        f = jax.jit(lambda x, y: x @ y)
        s = time_calls(lambda: f(a, b).block_until_ready(), min_seconds=0.5)
        best = max(best, 2 * m * k * n / s / 1e9)
    return best


def print_table(rows, columns, title=""):
    """Rows (dicts) as an aligned text table; None prints as '-'."""
    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    if title:
        print(title)
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def write_json(path, obj):
    if path:
        with open(path, "w") as f:
            json.dump(obj, f, indent=2)
        print(f"wrote {path}")


def backend_line():
    d = jax.devices()[0]
    return f"backend {jax.default_backend()} ({d.device_kind}), {jax.device_count()} device(s), jax {jax.__version__}"
