"""MEG (Kumar et al. 2019) on 2-D toys.

Usage: --config=configs/meg.py[:VARIANT], VARIANT = comma-separated tokens:
  a dataset: 25gaussians (default), 8gaussians, swissroll, checkerboard;
  'paper': the reference code's toy settings (3x512 networks, batch 256, lambda 0.1, latent 2,
           Adam(1e-4, 0.5, 0.9), 100k iterations); e.g. --config=configs/meg.py:swissroll,paper.

The default (no 'paper') keeps the paper's batch 256, 5 critic steps, lambda 0.1, latent 2 and
Adam(b1=0.5, b2=0.9) but uses 3x128 networks, lr 5e-4 and 6,000 iterations, so that it finishes in a
few minutes on a 2-core CPU: one 3x512 iteration costs ~18 GFLOP (about 0.15 s in the reference
implementation here), so 100k of them would take hours. With these settings the model covers all 25
modes (README, "MEG on the 25-Gaussians toy").
"""
from ebm_jax import configlib as common

DATASETS = ("25gaussians", "8gaussians", "swissroll", "checkerboard")


def get_config(variant: str = ""):
    config = common.base_config()
    config.method.name = "meg"
    config.method.n_critic = 5          # n_phi of Algorithm 1
    config.method.penalty_weight = 0.1  # lambda of Algorithm 1

    config.model.latent_dim = 2
    config.model.energy.hidden = (128, 128, 128)
    config.model.energy.activation = "leaky_relu"
    config.model.generator.hidden = (128, 128, 128)
    config.model.generator.activation = "relu"
    config.model.statistics.hidden = (128, 128, 128)
    config.model.statistics.activation = "leaky_relu"

    config.optim.name = "adam"
    config.optim.lr = 5e-4
    config.optim.b1 = 0.5
    config.optim.b2 = 0.9

    config.data.batch_size = 256
    config.train.num_steps = 6000

    tokens = common.parse_variant(variant, datasets=DATASETS, extras=("paper",))
    config.data.name = tokens.get("dataset", "25gaussians")
    if "paper" in tokens["extras"]:
        for net in ("energy", "generator", "statistics"):
            config.model[net].hidden = (512, 512, 512)
        config.optim.lr = 1e-4
        config.train.num_steps = 100_000
    return config
