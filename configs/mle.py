"""Exact maximum likelihood of 2-D data: the ceiling of the density benchmark (bench/density_benchmark.py).

Usage: --config=configs/mle.py[:DATASET], DATASET any toy of ebm_jax/data/toys.py (25gaussians default).

The energy MLP is trained on loss = mean E(x) + log Z, the negative log-likelihood itself: no method with
this energy network can get a lower KL(data || model) than its optimum. log Z is estimated without bias
by importance sampling from a proposal around the data (method.normaliser='importance', the default:
2,048 draws a step), or computed exactly as the logsumexp of -E over the cell centres of the grid that
evaluation normalises on (normaliser='grid': its metric grid [-4, 4]^2 at 600 points a side, 360,000
cells a step, which an accelerator evaluates in milliseconds and a 2-core CPU in about a second).
"""
from ebm_jax import configlib as common
from ebm_jax.data.toys import TOYS


def get_config(variant: str = ""):
    config = common.base_config()
    config.method.name = "mle"
    # 'importance': Z from draws of a proposal around the batch (cheap, unbiased); 'grid': the
    # logsumexp over the evaluation's metric grid, exact (all of it, grid_points_per_step = 0, on an accelerator)
    config.method.normaliser = "importance"
    config.method.grid_extent = 0.0        # half-width of the normalisation grid / uniform part; 0 = 4
    config.method.grid_size = 600          # 'grid': points per side, eval's cell size (4 / 300 * 2)
    config.method.grid_points_per_step = 0  # 'grid': random cells per step (0 = all 360,000)
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
    tokens = common.parse_variant(variant, datasets=tuple(TOYS))
    config.data.name = tokens.get("dataset", "25gaussians")
    return config
