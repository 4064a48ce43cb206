"""EBM-BB: bidirectional bounds (Geng et al. 2021).

--config=configs/ebm_bb.py[:VARIANT]; the variants (25gaussians, 8gaussians, swissroll, checkerboard,
mnist, paper) and every default, with the reasons, are in ebm_jax.methods.ebm_bb.make_config.
"""
from ebm_jax.methods.ebm_bb import make_config


def get_config(variant: str = ""):
    return make_config("ebm_bb", variant)
