"""Host time of the input pipeline, and how much of it the prefetch thread hides.

    python bench/input_pipeline.py                        # 64x64 crops of CelebA-sized JPEGs from a folder
    python bench/input_pipeline.py --images 4000 --batch 128

Writes --images random 178x218 JPEG files (CelebA's size; no download) to a temporary folder and reads
them as data.path does (decode, centre crop, resize to 64x64, scale to [-1, 1]). Prints the host
milliseconds to build one batch of --batch images (read + decode + resize + transfer, Trainer.batch),
and the wall time per iteration of a small training loop on them with train.prefetch off and on: with
prefetching the next batch is read while the current iteration runs, so the iteration costs about
max(host, device) instead of their sum.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import backend_line, load, print_table, write_json  # noqa: E402


def write_images(folder, n, seed=0):
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        base = rng.uniform(0, 255, (1, 1, 3)) + rng.normal(0, 40, (218, 178, 3))
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(os.path.join(folder, f"{i:06d}.jpg"), quality=90)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    from ebm_jax import train
    folder = os.path.join(tempfile.mkdtemp(prefix="celeba_like_"), "images")
    write_images(folder, args.images)
    over = {"data.path": folder, "data.image_size": 64, "data.batch_size": args.batch, "train.progress_bar": False,
            "train.steps_per_call": 1, "train.log_every": 10 ** 6, "train.checkpoint_every": 10 ** 6,
            "train.eval_every": 0, "model.energy.hidden": (64,), "model.generator.hidden": (64,),
            "model.statistics.hidden": (64,), "method.n_critic": 1}
    rows = []
    trainer = train.Trainer(load("configs/meg.py", over))
    trainer.batch(0)
    t0 = time.perf_counter()
    for s in range(1, 11):
        trainer.batch(s)
    host_ms = (time.perf_counter() - t0) / 10 * 1e3
    for prefetch in (False, True):
        trainer = train.Trainer(load("configs/meg.py", {**over, "train.prefetch": prefetch}))
        state = trainer.init_state()
        state, _, _ = trainer.run(state, 0, args.steps + 1)   # compile
        jax_block(state)
        t0 = time.perf_counter()
        for s in range(1, args.steps + 1):
            state, _, _ = trainer.run(state, s, args.steps + 1)
        jax_block(state)
        rows.append({"prefetch": prefetch, "host_ms_per_batch": host_ms,
                     "ms_per_iteration": (time.perf_counter() - t0) / args.steps * 1e3})
        trainer.close()
    print(backend_line())
    print(f"{args.batch} images of 178x218 JPEG -> 64x64 per batch")
    print_table(rows, ["prefetch", "host_ms_per_batch", "ms_per_iteration"])
    write_json(args.json, {"backend": backend_line(), "batch": args.batch, "rows": rows})


def jax_block(state):
    import jax
    jax.block_until_ready(state)


if __name__ == "__main__":
    main()
