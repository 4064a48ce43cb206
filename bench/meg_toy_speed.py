"""Speed of one MEG toy iteration on the current backend: compile seconds and iterations/s.

    python bench/meg_toy_speed.py                 # the reference toy size: batch 256, 3x512, 5 critic steps
    python bench/meg_toy_speed.py --variant=""    # the default config's smaller networks
    python bench/meg_toy_speed.py --iters=200 --json=meg_speed.json

One iteration = 5 energy updates with the zero-centred gradient penalty + one generator and
statistics-network update, as one compiled call (the same code path as training).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from configs import meg  # noqa: E402
from ebm_jax import train  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="paper", help="configs/meg.py variant (default: paper)")
    parser.add_argument("--iters", type=int, default=100, help="timed iterations after a warm-up")
    parser.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = parser.parse_args()

    config = meg.get_config(args.variant)
    trainer = train.Trainer(config)
    state = trainer.init_state()
    batch = trainer.batch(0)

    t0 = time.perf_counter()
    compiled = trainer.iteration.lower(state, batch, trainer.base_key).compile()
    compile_s = time.perf_counter() - t0

    for step in range(5):  # warm-up
        state, metrics = compiled(state, trainer.batch(step), trainer.base_key)
    jax.block_until_ready(state)
    batches = [trainer.batch(5 + i) for i in range(args.iters)]  # host batching outside the timed loop
    t0 = time.perf_counter()
    for b in batches:
        state, metrics = compiled(state, b, trainer.base_key)
    jax.block_until_ready(state)
    elapsed = time.perf_counter() - t0

    # host batching cost per iteration, reported separately
    t1 = time.perf_counter()
    for i in range(args.iters):
        trainer.batch(1000 + i)
    batch_s = (time.perf_counter() - t1) / args.iters

    result = {
        "backend": jax.default_backend(), "devices": jax.device_count(), "variant": args.variant,
        "batch_size": config.data.batch_size, "n_critic": config.method.n_critic,
        "energy_hidden": list(config.model.energy.hidden), "compile_seconds": round(compile_s, 3),
        "iterations_per_second": round(args.iters / elapsed, 2),
        "seconds_per_iteration": round(elapsed / args.iters, 5),
        "host_batching_seconds_per_iteration": round(batch_s, 6),
    }
    width = max(len(k) for k in result)
    print("MEG toy iteration")
    for k, v in result.items():
        print(f"  {k:<{width}}  {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
