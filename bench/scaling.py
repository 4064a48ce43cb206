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
The programs are those GPUs and TPUs run (model.kernels=native), which is where a run has many
devices; `--kernels cpu` measures the CPU rewrites instead (ebm_jax.kernels: among them spectral
normalisation's power iteration on the Gram matrix W^T W, parameter-side work every device repeats).

"replicated MFLOP" fits per-device FLOPs = split / n + replicated at 1 and the largest n: the work every
device repeats (parameter-side work: the optimiser's update, spectral norms' power iterations). To see
what it is made of, `--set` overrides a config field wherever a config has it, e.g.
`--set optim.name=sgd` (Adam's update costs 13 FLOPs per parameter in XLA's count) or
`--set model.energy.spectral_norm=false`.
"""
import argparse
import ast
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

from common import backend_line, compiled_figures, print_table, random_dataset, set_field, write_json  # noqa: E402
from speed import METHODS, SIZES, describe, size_config  # noqa: E402

DATA_SHAPES = {"mnist_mlp": (28, 28, 1), "dcgan32": (32, 32, 3)}


def parse_value(text):
    """A Python literal (800, 0.5, (16, 16), True), 'true' / 'false', or else the text itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config, overrides):
    """Sets each 'a.b.c=value' where the config has the field a.b.c (other configs are left alone);
    returns the items that were set."""
    applied = set()
    for item in overrides:
        if "=" not in item:
            sys.exit(f"--set {item!r} is not FIELD=VALUE, e.g. --set optim.name=sgd")
        path, _, value = item.partition("=")
        if set_field(config, path, parse_value(value), missing_ok=True):
            applied.add(item)
    return applied


def per_device_gflop(method, size, n, multiple, overrides=(), kernels="native"):
    from ebm_jax import train
    config = size_config(method, size, 1)
    config.model.kernels = kernels
    applied = apply_overrides(config, overrides)
    batch = int(config.data.batch_size)
    if batch % multiple:
        config.data.batch_size = max(multiple, batch // multiple * multiple)
    data = random_dataset(DATA_SHAPES[size]) if size in DATA_SHAPES else None
    trainer = train.Trainer(config, data, devices=jax.devices()[:n])
    compiled = trainer.lower(trainer.init_state(), 1)
    return compiled_figures(compiled)["gflop"], int(config.data.batch_size), describe(config), applied


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--devices", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="override a config field in every config that has it, e.g. optim.name=sgd")
    parser.add_argument("--kernels", default="native", choices=["native", "cpu"],
                        help="the programs of GPUs and TPUs (native, the default) or the CPU rewrites (ebm_jax.kernels)")
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = parser.parse_args()
    counts = [n for n in args.devices if n <= jax.device_count()]
    if len(counts) < len(args.devices):
        print(f"only {jax.device_count()} devices: measuring {counts} (on a CPU set "
              "XLA_FLAGS=--xla_force_host_platform_device_count=8)", file=sys.stderr)
    rows, set_somewhere = [], set()   # set_somewhere: the --set items some measured config had
    for size in args.sizes:
        for method in args.methods:
            row = {"size": size, "method": method}
            flops = {}
            for n in counts:
                g, batch, nets, applied = per_device_gflop(method, size, n, max(counts), args.set, args.kernels)
                set_somewhere |= applied
                flops[n] = g
                row[f"gflop_per_device@{n}"] = g
            row["batch"], row["networks"] = batch, nets
            base = flops.get(1)
            for n in counts:
                if n > 1 and base:
                    row[f"efficiency@{n}"] = base / (n * flops[n])
            top = max(counts)
            if top > 1 and base:
                row["replicated_mflop"] = 1e3 * (flops[top] - base / top) / (1 - 1 / top)
            rows.append(row)
            eff = ", ".join(f"{n}: {row[f'efficiency@{n}']:.2f}" for n in counts if f"efficiency@{n}" in row)
            print(f"{size:9s} {method:9s} efficiency {eff}", file=sys.stderr, flush=True)
    for item in args.set:
        if item not in set_somewhere:
            print(f"--set {item}: no measured config has that field; nothing was changed by it", file=sys.stderr)
    print(backend_line() + f"; model.kernels={args.kernels}")
    cols = ["size", "method", "batch"] + [f"gflop_per_device@{n}" for n in counts] + \
        [f"efficiency@{n}" for n in counts if n > 1] + (["replicated_mflop"] if max(counts) > 1 else [])
    print_table(rows, cols)
    write_json(args.json, {"backend": backend_line(), "kernels": args.kernels, "overrides": list(args.set), "rows": rows})


if __name__ == "__main__":
    main()
