"""Is the work of an iteration split over the devices? Per-device FLOPs of every method at 1-8 devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python bench/scaling.py       # all methods x sizes (~20 min)
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python bench/scaling.py --sizes toy --methods meg ebm_bb
    python bench/scaling.py --devices 1 2 4 8                                         # on a machine with 8 devices

For every method at the sizes of bench/speed.py (toy: its default toy config; mnist_mlp: its :mnist
config with Table 7's MLPs; dcgan32: its :cifar10 config), the one-iteration program is compiled for a
mesh of the first n devices, and XLA's cost analysis of the compiled (partitioned) program gives the
FLOPs one device executes. Efficiency at n devices = FLOPs on 1 / (n x per-device FLOPs on n): 1 when
the work is split evenly, 1/n when every device repeats all of it. Batches that do not divide a device
count are rounded down to a multiple of 8 (the batch in the table). Nothing is run: only compiled.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

from common import backend_line, compiled_figures, print_table, random_dataset, write_json  # noqa: E402
from speed import METHODS, SIZES, describe, size_config  # noqa: E402

DATA_SHAPES = {"mnist_mlp": (28, 28, 1), "dcgan32": (32, 32, 3)}


def per_device_gflop(method, size, n, multiple):
    from ebm_jax import train
    config = size_config(method, size, 1)
    batch = int(config.data.batch_size)
    if batch % multiple:
        config.data.batch_size = max(multiple, batch // multiple * multiple)
    data = random_dataset(DATA_SHAPES[size]) if size in DATA_SHAPES else None
    trainer = train.Trainer(config, data, devices=jax.devices()[:n])
    compiled = trainer.lower(trainer.init_state(), 1)
    return compiled_figures(compiled)["gflop"], int(config.data.batch_size), describe(config)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--devices", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = parser.parse_args()
    counts = [n for n in args.devices if n <= jax.device_count()]
    if len(counts) < len(args.devices):
        print(f"only {jax.device_count()} devices: measuring {counts} (on a CPU set "
              "XLA_FLAGS=--xla_force_host_platform_device_count=8)", file=sys.stderr)
    rows = []
    for size in args.sizes:
        for method in args.methods:
            row = {"size": size, "method": method}
            flops = {}
            for n in counts:
                g, batch, nets = per_device_gflop(method, size, n, max(counts))
                flops[n] = g
                row[f"gflop_per_device@{n}"] = g
            row["batch"], row["networks"] = batch, nets
            base = flops.get(1)
            for n in counts:
                if n > 1 and base:
                    row[f"efficiency@{n}"] = base / (n * flops[n])
            rows.append(row)
            eff = ", ".join(f"{n}: {row[f'efficiency@{n}']:.2f}" for n in counts if f"efficiency@{n}" in row)
            print(f"{size:9s} {method:9s} efficiency {eff}", file=sys.stderr, flush=True)
    print(backend_line())
    cols = ["size", "method", "batch"] + [f"gflop_per_device@{n}" for n in counts] + \
        [f"efficiency@{n}" for n in counts if n > 1]
    print_table(rows, cols)
    write_json(args.json, {"backend": backend_line(), "rows": rows})


if __name__ == "__main__":
    main()
