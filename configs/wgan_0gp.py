"""WGAN-0GP: the paper's baseline, no entropy term (Geng et al. 2021).

--config=configs/wgan_0gp.py[:VARIANT]; the variants (25gaussians, 8gaussians, swissroll, checkerboard,
mnist, paper) and every default, with the reasons, are in ebm_jax.methods.ebm_bb.make_config.
"""
from ebm_jax.methods.ebm_bb import make_config


def get_config(variant: str = ""):
    return make_config("wgan_0gp", variant)
