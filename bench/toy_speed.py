"""Iterations/s and compile seconds of every method's toy config on the current backend.

    python bench/toy_speed.py                          # all toy configs, their default sizes
    python bench/toy_speed.py --configs configs/meg.py:paper   # MEG at the reference size (3x512, batch 256)
    python bench/toy_speed.py --configs configs/ebm_bb.py configs/meg.py:paper --iters 300
    python bench/toy_speed.py --json toy_speed.json

Each iteration is the method's whole compiled step (all critic updates, the generator update and its
estimators), timed after compilation and a warm-up, with host batching outside the timed loop.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from ebm_jax import configlib, train  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = ["configs/meg.py", "configs/ebm_bb.py", "configs/ebm_0gp.py", "configs/wgan_0gp.py"]


def measure(spec, iters):
    path, _, variant = spec.partition(":")
    config = configlib.load_config(os.path.join(REPO, path) + (":" + variant if variant else ""))
    trainer = train.Trainer(config)
    state = trainer.init_state()
    t0 = time.perf_counter()
    compiled = trainer.iteration.lower(state, trainer.batch(0), trainer.base_key).compile()
    compile_s = time.perf_counter() - t0
    for step in range(5):
        state, _ = compiled(state, trainer.batch(step), trainer.base_key)
    jax.block_until_ready(state)
    batches = [trainer.batch(5 + i) for i in range(iters)]
    t0 = time.perf_counter()
    for b in batches:
        state, _ = compiled(state, b, trainer.base_key)
    jax.block_until_ready(state)
    elapsed = time.perf_counter() - t0
    return {"config": spec, "method": config.method.name, "batch_size": config.data.batch_size,
            "compile_seconds": round(compile_s, 2), "iterations_per_second": round(iters / elapsed, 1),
            "ms_per_iteration": round(1000 * elapsed / iters, 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=DEFAULT)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    rows = [measure(spec, args.iters) for spec in args.configs]
    print(f"backend {jax.default_backend()}, {jax.device_count()} device(s)")
    header = ["config", "batch_size", "compile_seconds", "iterations_per_second", "ms_per_iteration"]
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in header]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(str(r[h]).ljust(w) for h, w in zip(header, widths)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
