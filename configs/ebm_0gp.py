"""EBM-0GP: the lower bound with a zero-centred gradient penalty (Geng et al. 2021).

--config=configs/ebm_0gp.py[:VARIANT]; the variants (25gaussians, 8gaussians, swissroll, checkerboard,
mnist, paper) and every default, with the reasons, are in ebm_jax.methods.ebm_bb.make_config.
"""
from ebm_jax.methods.ebm_bb import make_config


def get_config(variant: str = ""):
    return make_config("ebm_0gp", variant)
