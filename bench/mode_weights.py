"""Whether an energy's wells offset its sampler's mode errors: for each replica of a run on a 2-D mixture
toy (25- or 8-Gaussians, sevenaniso, bands), the energy's mass per component against the generator's
mode frequencies.

    python bench/mode_weights.py WORKDIR [WORKDIR ...] [--samples 20000]

Per replica: w_k the data's weights, Q_k the energy's mass exp(-E)/Z (T = 1, on the evaluation's metric
grid) on component k's region (the cells within 4 standard deviations of its centre,
toy2d.mode_regions), normalised over the components, g_k the share of generator samples nearest to
component k; printed with the correlation of log(Q_k / w_k) with log(g_k / w_k), KL(w || Q) and
KL(w || g). A correlation near -1 with KL(w || Q) above KL(w || g) is an energy that raised the wells
its generator over-covers and deepened those it under-covers (docs/density_benchmark.md).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import ebm_jax  # noqa: E402
from ebm_jax.data import TOY_EXTENT, get_toy  # noqa: E402
from ebm_jax.evaluation import toy2d  # noqa: E402
from ebm_jax.state import num_seeds  # noqa: E402


def mode_weights(model, num_samples: int, key):
    """(w, Q, g) of one loaded model of a mixture toy, as the module's docstring defines them."""
    data = model.config.data
    toy = get_toy(data.name)
    if toy.centers is None:
        raise ValueError(f"data.name {data.name!r} is not a mixture; mode weights need one of 25gaussians, "
                         "8gaussians, sevenaniso, bands.")
    if not model.method.has_generator:
        raise ValueError(f"{model.method.name} has no generator whose mode frequencies to compare with.")
    r, n = toy2d.metric_grid(TOY_EXTENT, int(model.config.eval.grid_size), float(model.config.eval.get("grid_extent", 0.0)))
    _, pts, _ = toy2d.grid_points(r, n)
    regions = toy2d.mode_regions(pts, toy.centers, toy.std, toy.covariances)
    neg = -toy2d.batched(lambda x: np.asarray(model.energy(x)), pts).astype(np.float64)
    mass = np.exp(neg - neg.max())
    q = np.bincount(regions[regions >= 0], weights=mass[regions >= 0], minlength=len(toy.centers))
    x = np.asarray(model.sample(key, num_samples), np.float64)
    nearest = np.argmin(toy2d.component_distances(x, toy.centers, toy.std, toy.covariances), axis=1)
    g = np.bincount(nearest, minlength=len(toy.centers)) / len(x)
    return np.asarray(toy.weights, np.float64), q / q.sum(), g


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--samples", type=int, default=20000, help="generator samples per replica")
    args = parser.parse_args()
    for workdir in args.workdirs:
        model = ebm_jax.load(workdir)
        print(workdir)
        for s in range(num_seeds(model.config)):
            model = model if s == 0 else ebm_jax.load(workdir, seed=s)
            w, q, g = mode_weights(model, args.samples, jax.random.PRNGKey(s))
            with np.errstate(divide="ignore"):
                corr = np.corrcoef(np.log(q / w), np.log(g / w))[0, 1]
                kl_q, kl_g = np.sum(w * np.log(w / q)), np.sum(w * np.log(w / g))
            print(f"  seed {s}: corr(log Q/w, log g/w) {corr:+.2f}  KL(w || Q) {kl_q:.3f}  KL(w || g) {kl_g:.3f}")
            print("    Q/w " + " ".join(f"{v:.2f}" for v in q / w))
            print("    g/w " + " ".join(f"{v:.2f}" for v in g / w))


if __name__ == "__main__":
    main()
