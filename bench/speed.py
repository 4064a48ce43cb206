"""Compile seconds, iterations/s and memory of every method at toy, MNIST-MLP and 32x32 DCGAN sizes.

    python bench/speed.py                                        # every method x size (~15 min on a 2-core CPU)
    python bench/speed.py --methods meg ebm_bb --sizes toy --json speed.json
    python bench/speed.py --steps_per_call 1 --sizes toy          # one iteration per compiled call

Sizes (random stand-in data of the right shape: speed does not depend on the pixels, and nothing is
downloaded):
  toy        the method's default config (2-D toy data, its own networks and batch)
  mnist_mlp  the method's :mnist config on 28x28x1 images, with every convolutional network (MEG's MNIST
             networks, SteinGAN's deconv generator) replaced by Table 7's MLPs: energy 784-2000-1000-500-
             250-250-1, generator z-500-1000-2000-784, MEG's statistics network [x, z]-512-512-512-1
  dcgan32    the method's :cifar10 config on 32x32x3 images (EBM-BB Table 8's DCGAN networks where the
             method has a generator or an image energy; SteinCD's energy is its autoencoder)

Columns: steps_per_call (the config's own unless --steps_per_call: 10 on the toys, 1 on real data),
compile s (lowering + XLA compilation of the program that runs), ms/it and it/s (as the training loop
runs it, Trainer.run: host batches, transfer, the compiled call, after a warm-up; median of 3 rounds),
GFLOP/it (XLA's cost analysis of the one-step iteration), GFLOP/s achieved, memory MiB (XLA's memory analysis of the compiled
iteration: arguments + outputs + temporaries - donated aliases, i.e. its peak footprint on the device),
device peak MiB (the allocator's peak where the backend reports one: GPU / TPU, not CPU).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (backend_line, compile_run, device_peak_mib, load, print_table, random_dataset,  # noqa: E402
                    seconds_per_iteration, write_json)

METHODS = {"meg": "configs/meg.py", "ebm_bb": "configs/ebm_bb.py", "ebm_0gp": "configs/ebm_0gp.py",
           "wgan_0gp": "configs/wgan_0gp.py", "steincd": "configs/steincd.py", "cd": "configs/steincd.py:cd1",
           "steingan": "configs/steingan.py", "ddgm": "configs/ddgm.py", "triangle": "configs/triangle.py"}
SIZES = ("toy", "mnist_mlp", "dcgan32")
CONV_KINDS = ("meg_mnist", "dcgan", "resnet", "deconv")
TABLE7 = {"energy": {"kind": "mlp", "hidden": (2000, 1000, 500, 250, 250), "activation": "leaky_relu"},
          "generator": {"kind": "mlp", "hidden": (500, 1000, 2000), "activation": "relu"},
          "statistics": {"kind": "mlp", "hidden": (512, 512, 512), "activation": "leaky_relu"}}


def spec_for(method, size):
    base = METHODS[method]
    path, _, variant = base.partition(":")
    token = {"toy": "", "mnist_mlp": "mnist", "dcgan32": "cifar10"}[size]
    variant = ",".join(t for t in (variant, token) if t)
    return path + (":" + variant if variant else "")


def size_config(method, size, steps_per_call):
    import ml_collections
    over = {"train.progress_bar": False, "train.log_every": 10 ** 6, "train.checkpoint_every": 10 ** 6,
            "train.eval_every": 0}
    if steps_per_call:
        over["train.steps_per_call"] = steps_per_call
    config = load(spec_for(method, size), over)
    if size == "mnist_mlp":
        for role, net in TABLE7.items():
            if role in config.model and config.model[role].get("kind", "mlp") in CONV_KINDS:
                config.model[role] = ml_collections.ConfigDict(net)
    return config


def describe(config):
    parts = []
    for role in ("energy", "generator", "statistics", "inference"):
        if role in config.model and hasattr(config.model[role], "get"):
            net = config.model[role]
            kind = net.get("kind", "mlp")
            detail = net.get("hidden", net.get("width", ""))
            if isinstance(detail, (tuple, list)):
                detail = "-".join(map(str, detail))
            parts.append(f"{role[0].upper()}:{kind}{'(' + str(detail) + ')' if detail != '' else ''}")
    return " ".join(parts)


def measure(method, size, steps_per_call, min_seconds):
    from ebm_jax import train
    config = size_config(method, size, steps_per_call)
    data = None
    if size == "mnist_mlp":
        data = random_dataset((28, 28, 1))
    elif size == "dcgan32":
        data = random_dataset((32, 32, 3))
    trainer = train.Trainer(config, data)
    steps_per_call = trainer.steps_per_call
    compile_s, figures = compile_run(trainer, trainer.init_state())
    s = seconds_per_iteration(trainer, trainer.init_state(), min_seconds, min_calls=2)
    gflop = figures["gflop"]
    return {"method": method, "size": size, "config": spec_for(method, size), "networks": describe(config),
            "batch": int(config.data.batch_size), "steps_per_call": steps_per_call,
            "compile_seconds": compile_s, "ms_per_iteration": 1e3 * s, "iterations_per_second": 1.0 / s,
            "gflop_per_iteration": gflop, "gflop_per_second": gflop / s if gflop else None,
            "memory_mib": figures["peak_mib"], "device_peak_mib": device_peak_mib()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--steps_per_call", type=int, default=0,
                        help="iterations per compiled call (default: each config's own train.steps_per_call)")
    parser.add_argument("--min_seconds", type=float, default=2.0, help="length of each of the 3 timed rounds")
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        for method in args.methods:
            row = measure(method, size, args.steps_per_call, args.min_seconds)
            rows.append(row)
            print(f"{size:9s} {method:9s} {row['ms_per_iteration']:9.2f} ms/it  compile {row['compile_seconds']:.1f} s",
                  file=sys.stderr, flush=True)
    print(backend_line())
    print_table(rows, ["size", "method", "batch", "steps_per_call", "networks", "compile_seconds", "ms_per_iteration",
                       "iterations_per_second", "gflop_per_iteration", "gflop_per_second", "memory_mib",
                       "device_peak_mib"])
    write_json(args.json, {"backend": backend_line(), "rows": rows})


if __name__ == "__main__":
    main()
