"""Exact maximum likelihood of 2-D data: the ceiling of the density benchmark (bench/density_benchmark.py).

Usage: --config=configs/mle.py[:DATASET[,grid][,net=METHOD]], DATASET any toy of ebm_jax/data/toys.py
(25gaussians default); grid normalises on a randomly shifted 200 x 200 grid instead of by importance
sampling (below); net=METHOD trains that method's own toy energy network (configs/METHOD.py:DATASET's
model.energy, e.g. net=steingan: its spectrally normalised MLP) by exact maximum likelihood instead of
the default 3x128 swish MLP: the ceiling of that network, which separates what a method's objective
loses from what its network cannot represent. METHOD is one of NETWORKS below.

The energy MLP is trained on loss = mean E(x) + log Z, the negative log-likelihood itself: no method with
this energy network can get a lower KL(data || model) than its optimum. log Z is estimated without bias
by importance sampling from a proposal around the data (method.normaliser='importance', the default:
2,048 draws a step), or computed exactly as the logsumexp of -E over the cell centres of the grid that
evaluation normalises on (normaliser='grid': its metric grid [-4, 4]^2 at 600 points a side, 360,000
cells a step, which an accelerator evaluates in milliseconds and a 2-core CPU in about a second).
"""
import ml_collections

from ebm_jax import configlib as common
from ebm_jax.data.toys import TOYS

# methods whose toy energy is a network of x alone, and the variant of their config file that builds it
# (the triangle's energy f(x, z) needs its inference network, so it has no entry)
NETWORKS = {"meg": "meg.py", "ebm_bb": "ebm_bb.py", "ebm_0gp": "ebm_0gp.py", "wgan_0gp": "wgan_0gp.py",
            "steincd": "steincd.py", "cd": "steincd.py:cd1", "steingan": "steingan.py", "ddgm": "ddgm.py",
            "pcd": "pcd.py"}


def get_config(variant: str = ""):
    config = common.base_config()
    config.method.name = "mle"
    # 'importance': Z from draws of a proposal around the batch (cheap, unbiased); 'grid': the
    # logsumexp over the evaluation's metric grid, exact (all of it, grid_points_per_step = 0, on an accelerator)
    config.method.normaliser = "importance"
    config.method.grid_extent = 0.0        # half-width of the normalisation grid / uniform part; 0 = 4
    config.method.grid_size = 600          # 'grid': points per side, eval's cell size (4 / 300 * 2)
    config.method.grid_points_per_step = 0  # 'grid': random cells per step (0 = all 360,000)
    config.method.grid_shift = False       # 'grid': move the grid by a random offset within a cell each step
    config.method.importance_samples = 2048
    config.method.kde_bandwidth = 0.03     # the proposal's kernel around data points (25-Gaussians: std 0.018)
    config.method.uniform_fraction = 0.2   # of the proposal's draws uniform on [-4, 4]^2
    config.model.energy.hidden = (128, 128, 128)   # the width of the other methods' toy energies
    config.model.energy.activation = "swish"   # smooth: a piecewise-linear energy makes polygonal wells
    del config.model["generator"]
    del config.model["statistics"]
    config.optim.name = "adam"
    config.optim.lr = 1e-3
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.schedule = "cosine"
    config.data.batch_size = 512
    config.train.num_steps = 4_000
    config.train.log_every = 200
    config.train.eval_every = 0
    config.train.checkpoint_every = 2_000
    config.sampling.space = "data"
    config.sampling.mcmc_steps = 500
    config.sampling.step_size = 1e-4
    nets = [t.strip()[len("net="):] for t in (variant or "").split(",") if t.strip().startswith("net=")]
    rest = ",".join(t for t in (variant or "").split(",") if not t.strip().startswith("net="))
    tokens = common.parse_variant(rest, datasets=tuple(TOYS), extras=("grid",))
    config.data.name = tokens.get("dataset", "25gaussians")
    if "grid" in tokens["extras"]:
        # log Z on a randomly shifted 200 x 200 grid of [-4, 4]^2 (cells of 0.04, 2.3 stds of a 25-Gaussians
        # mode): no proposal to miss mass between narrow modes, at 1/9 of the evaluation grid's energies a step
        config.method.normaliser = "grid"
        config.method.grid_size = 200
        config.method.grid_shift = True
    if len(nets) > 1 or (nets and nets[0] not in NETWORKS):
        raise ValueError(f"config variant {variant!r}: net= takes one of {sorted(NETWORKS)} (the methods whose toy "
                         "energy is a network of x alone).")
    if nets:
        file, _, extra = NETWORKS[nets[0]].partition(":")
        source = common.load_sibling(__file__, file).get_config(",".join(filter(None, (config.data.name, extra))))
        config.model.energy = ml_collections.ConfigDict(source.model.energy.to_dict())
    return config
