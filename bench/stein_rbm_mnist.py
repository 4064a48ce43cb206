"""SteinGAN paper, Figure 1(a)/(b): exact test log-likelihood of a 10-hidden-unit Gaussian-Bernoulli
RBM on MNIST over training, for CD-1, CD-10, SteinCD, SteinGAN and SteinCD-GAN(alpha).

    python bench/stein_rbm_mnist.py --data_dir ../shared/data/mnist            # all runs, default steps
    python bench/stein_rbm_mnist.py --steps 600 --eval_every 100 --runs steincd cd1
    python bench/stein_rbm_mnist.py --out bench/results/stein_rbm_mnist        # JSON + PNG written there
    python bench/stein_rbm_mnist.py --steps 1500 --eval_every 100 --generator_channels 32 --generator_width 512

Every run uses the configs' MNIST variants (configs/steincd.py:mnist, :mnist,cd1 / :mnist,cd10,
configs/steingan.py:mnist with method.alpha) and the same seed; the log-likelihood is exact
(log Z by summing over the 2^10 hidden states), averaged over the 10,000 test images, in nats, for
pixels scaled to [-1, 1] (a continuous density: no dequantisation).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from ebm_jax import configlib, train  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {
    "cd1": ("steincd.py", "mnist,cd1", {}),
    "cd10": ("steincd.py", "mnist,cd10", {}),
    "steincd": ("steincd.py", "mnist", {}),
    "steingan": ("steingan.py", "mnist", {}),
    "steincd_gan_0.1": ("steingan.py", "mnist", {"alpha": 0.1}),
    "steincd_gan_0.25": ("steingan.py", "mnist", {"alpha": 0.25}),
    "steincd_gan_0.5": ("steingan.py", "mnist", {"alpha": 0.5}),
}


def run(name, data_dir, steps, eval_every, seed, generator_channels=0, generator_width=0):
    cfg_file, variant, method_overrides = RUNS[name]
    config = configlib.load_config(os.path.join(REPO, "configs", cfg_file) + ":" + variant)
    config.data.data_dir = data_dir
    config.train.num_steps = steps
    config.train.seed = seed
    for k, v in method_overrides.items():
        config.method[k] = v
    if "generator" in config.model and generator_channels:
        config.model.generator.channels = generator_channels
    if "generator" in config.model and generator_width:
        config.model.generator.width = generator_width
    trainer = train.Trainer(config)
    method, test = trainer.method, jnp.asarray(trainer.dataset.test)
    state = trainer.init_state()

    @jax.jit
    def test_ll(params):
        return -jnp.mean(method.energy(params, test)) - method.log_partition(params)

    curve = [(0, float(test_ll(method.inference_params(state))))]
    t0 = time.perf_counter()
    for step in range(steps):
        state, _ = trainer.iteration(state, trainer.batch(step), trainer.base_key)
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            curve.append((step + 1, float(test_ll(method.inference_params(state)))))
            print(f"  {name:18s} step {step + 1:6d}  test log-likelihood {curve[-1][1]:9.2f}", flush=True)
    return {"run": name, "steps": [s for s, _ in curve], "test_log_likelihood": [v for _, v in curve],
            "seconds": round(time.perf_counter() - t0, 1), "step_size": float(config.method.step_size),
            "alpha": float(config.method.get("alpha", 1.0 if cfg_file == "steincd.py" else 0.0))}


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    panels = [("(a) CD-type", ["cd1", "cd10", "steincd"]),
              ("(b) SteinCD-GAN(alpha)", ["steingan", "steincd_gan_0.1", "steincd_gan_0.25", "steincd_gan_0.5", "steincd"])]
    for ax, (title, names) in zip(axes, panels):
        for r in results:
            if r["run"] in names:
                ax.plot(r["steps"], r["test_log_likelihood"], label=r["run"])
        ax.set_title(title)
        ax.set_xlabel("iteration (batch 100)")
        ax.set_ylabel("test log-likelihood (nats)")
        ax.legend()
        shown = [r for r in results if r["run"] in names]
        if shown:  # zoom on where the runs end: they all rise from about -1080 within 250 iterations
            low = min(r["test_log_likelihood"][-1] for r in shown) - 8
            ax.set_ylim(low, max(max(r["test_log_likelihood"]) for r in shown) + 2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=os.path.join(os.path.dirname(REPO), "shared", "data", "mnist"))
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--eval_every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--generator_channels", type=int, default=0,
                        help="SteinGAN's deconvolution channels (0 = the config's 64); smaller is faster on a CPU")
    parser.add_argument("--generator_width", type=int, default=0, help="its fully connected width (0 = 1024)")
    parser.add_argument("--out", default="stein_rbm_mnist", help="prefix of the .json and .png written")
    parser.add_argument("--replot", default="", help="only redraw the PNG of this earlier JSON (written beside it)")
    args = parser.parse_args()
    if args.replot:
        with open(args.replot) as f:
            plot(json.load(f)["results"], os.path.splitext(args.replot)[0] + ".png")
        return
    if not os.path.isdir(args.data_dir):
        sys.exit(f"error: --data_dir {args.data_dir} is not a folder; it must hold the MNIST idx files "
                 "(train-images-idx3-ubyte.gz, t10k-images-idx3-ubyte.gz).")
    results = [run(name, args.data_dir, args.steps, args.eval_every, args.seed, args.generator_channels,
                   args.generator_width) for name in args.runs]
    print("\n| run | final test log-likelihood (nats) | best | seconds |\n| --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['run']} | {r['test_log_likelihood'][-1]:.2f} | {max(r['test_log_likelihood']):.2f} | {r['seconds']} |")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"steps": args.steps, "seed": args.seed, "backend": jax.default_backend(),
                   "generator_channels": args.generator_channels, "generator_width": args.generator_width,
                   "results": results}, f, indent=1)
    plot(results, args.out + ".png")
    print(f"wrote {args.out}.json and {args.out}.png")


if __name__ == "__main__":
    main()
