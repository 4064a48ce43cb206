"""What one compiled iteration is made of: time, XLA operations, FLOPs, and (--trace) where the time goes.

    python bench/iteration_profile.py                                  # the toy configs below
    python bench/iteration_profile.py --configs configs/meg.py:paper --trace
    python bench/iteration_profile.py --configs "configs/ebm_0gp.py method.entropy=exact" --trace --top 25

Each config is 'SPEC [field=value ...]'. For each: ms per call of the compiled one-step iteration with a
fixed batch (min over rounds: the program's own time, without host batching), the number of
instructions and fusions in XLA's optimised entry computation (on a CPU each is a separate kernel call,
so thousands of tiny ones cost more than the arithmetic of a toy iteration), XLA's FLOP count, and with
--trace a jax.profiler trace of 30 calls summed per kernel kind and per kernel. This is how the
fixes in docs/performance.md were found; the script runs against the checkout it lives in, so a copy
in an older checkout measures the "before".
"""
import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

from common import backend_line, compiled_figures, load, print_table, write_json  # noqa: E402

DEFAULT = ["configs/ebm_bb.py method.entropy=exact", "configs/ebm_0gp.py method.entropy=exact",
           "configs/ebm_bb.py", "configs/wgan_0gp.py", "configs/meg.py", "configs/meg.py:paper",
           "configs/steincd.py", "configs/steingan.py", "configs/ddgm.py", "configs/triangle.py"]


def parse(entry):
    spec, *pairs = entry.split()
    over = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        over[key] = value
    return spec, over


def entry_counts(hlo_text):
    entry = hlo_text[hlo_text.index("ENTRY"):]
    ops = collections.Counter(m.group(1) for m in re.finditer(r"\n\s+(?:ROOT )?%\S+ = \S+ ([\w\-]+)\(", entry))
    return sum(ops.values()), ops.get("fusion", 0)


def trace_kernels(call, calls=30):
    d = tempfile.mkdtemp()
    try:
        jax.profiler.start_trace(d)
        for _ in range(calls):
            call()
        jax.profiler.stop_trace()
        path = sorted(glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True))[-1]
        events = json.load(gzip.open(path))["traceEvents"]
    finally:
        shutil.rmtree(d, ignore_errors=True)
    skip = ("ThunkExecutor", "PjitFunction", "$", "CommonPjRt", "PjRt", "Execute")
    per_kernel = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and not e["name"].startswith(skip):
            per_kernel[e["name"]] += e["dur"] / calls
    per_kind = collections.Counter()
    for name, us in per_kernel.items():
        per_kind[name.split(".")[0]] += us
    return per_kind, per_kernel


def measure(entry, args):
    from ebm_jax import train
    spec, over = parse(entry)
    trainer = train.Trainer(load(spec, {**over, "train.progress_bar": False}))
    state = trainer.init_state()
    batch = trainer.batch(0)
    compiled = trainer.iteration.lower(state, batch, trainer.base_key).compile()
    instructions, fusions = entry_counts(compiled.as_text())
    box = {"state": state}

    def call():
        box["state"], _ = compiled(box["state"], batch, trainer.base_key)
        jax.block_until_ready(box["state"])

    call()
    once = time.perf_counter()
    call()
    n = max(3, int(0.5 / max(time.perf_counter() - once, 1e-6)))
    best = float("inf")
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            call()
        best = min(best, (time.perf_counter() - t0) / n)
    row = {"config": entry, "ms": 1e3 * best, "instructions": instructions, "fusions": fusions,
           "gflop": compiled_figures(compiled)["gflop"]}
    if args.trace:
        per_kind, per_kernel = trace_kernels(call)
        row["trace_us_per_kind"] = dict(per_kind.most_common(args.top))
        row["trace_us_per_kernel"] = dict(per_kernel.most_common(args.top))
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=DEFAULT)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--trace", action="store_true", help="also profile 30 calls with jax.profiler")
    parser.add_argument("--top", type=int, default=12, help="kernel kinds / kernels listed per config with --trace")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    rows = [measure(entry, args) for entry in args.configs]
    print(backend_line())
    print_table(rows, ["config", "ms", "instructions", "fusions", "gflop"])
    for r in rows:
        if "trace_us_per_kind" in r:
            print(f"\n{r['config']}: microseconds per call by kernel kind (profiled, so inflated), then by kernel")
            for name, us in r["trace_us_per_kind"].items():
                print(f"  {us:10.1f}  {name}")
            for name, us in r["trace_us_per_kernel"].items():
                print(f"  {us:10.1f}  {name}")
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
