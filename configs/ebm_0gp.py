"""EBM-0GP: the lower bound with a zero-centred gradient penalty (Geng et al. 2021).

Usage: --config=configs/ebm_0gp.py[:VARIANT]; the variants and every default, with the reasons, are
configs/ebm_bb.py's (make_config), shared by the three methods.
"""
from ebm_jax import configlib

make_config = configlib.load_sibling(__file__, "ebm_bb.py").make_config


def get_config(variant: str = ""):
    return make_config("ebm_0gp", variant)
