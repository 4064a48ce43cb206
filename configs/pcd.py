"""Persistent contrastive divergence with short-run Langevin dynamics from a replay buffer (Du &
Mordatch 2019): the MCMC-trained EBM the amortized methods are compared with.

Usage: --config=configs/pcd.py[:DATASET], DATASET any toy of ebm_jax/data/toys.py (25gaussians default).

Du & Mordatch's recipe on the toys' scale: a buffer of 10,000 samples, 5% of each batch restarted from
uniform noise on [-2, 2]^2 (the toys' square), the energy regulariser alpha (E(x+)^2 + E(x-)^2) with
alpha = 0.1 (their images use 1). Not given there for 2-D data and chosen here: 40 Langevin steps of
size 1e-4 (with the proper sqrt(2a) noise; the mode width of 25-Gaussians is 0.018), Adam(1e-3, 0.9,
0.999) decaying to 0 on a cosine over 5,000 iterations, the 3x128 energy of the other toy configs plus
the Stein toys' 0.5 ||x||^2 base measure (reason below; mean KL over the eight benchmark toys 0.69 -> 0.48).
5,000 iterations with the cosine instead of 20,000 at a constant rate: a quarter of the cost (40
Langevin steps an iteration make PCD the dearest toy method, 43 minutes for 3 seeds of 25-Gaussians at
20,000 here) for KL(data || model) 0.200 +- 0.013 on sevenaniso (3 seeds, before the base measure;
0.188 +- 0.015 with it; docs/methods/references.md).
"""
from ebm_jax import configlib as common
from ebm_jax.data.toys import TOYS


def get_config(variant: str = ""):
    config = common.base_config()
    config.method.name = "pcd"
    config.method.buffer_size = 10_000
    config.method.langevin_steps = 40
    config.method.step_size = 1e-4
    config.method.noise_scale = 1.0
    config.method.reinit_prob = 0.05
    config.method.energy_reg = 0.1
    config.method.init_range = 2.0
    config.model.energy.hidden = (128, 128, 128)
    config.model.energy.activation = "swish"
    # 0.5 ||x||^2 added to the energy (a N(0, I) base measure, as the Stein toys'): the chains start on
    # the data's square and take steps of about 0.01, so nothing pushes the energy up far from the data,
    # and without it two of three seeds on 25-Gaussians put 95% of their mass outside the square
    # (KL 3.69, 3.88; the third 0.94), and 15 to 20% of it lay outside on 8-Gaussians. 3 seeds, KL on
    # 25- / 8-Gaussians: 2.84 +- 1.34 / 1.11 +- 0.11 without, 1.55 +- 0.29 / 0.82 +- 0.21 with it;
    # restarting the chains on [-4, 4]^2 instead (method.init_range = 4): 1.39 +- 0.13 / 1.20 +- 0.06.
    config.model.energy.quadratic = 0.5
    del config.model["generator"]
    del config.model["statistics"]
    config.optim.name = "adam"
    config.optim.lr = 1e-3
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.schedule = "cosine"
    config.data.batch_size = 256
    config.train.num_steps = 5_000
    config.train.log_every = 500
    config.train.eval_every = 0
    config.train.checkpoint_every = 2_500
    config.sampling.space = "data"
    config.sampling.mcmc_steps = 500
    config.sampling.step_size = 1e-4
    tokens = common.parse_variant(variant, datasets=tuple(TOYS))
    config.data.name = tokens.get("dataset", "25gaussians")
    common.set_toy_temperature(config)   # the reported density's temperature: configlib says how it was chosen
    return config
