"""WGAN-0GP: the zero-centred-penalty critic and a generator without entropy, the baseline of
Geng et al. 2021.

Usage: --config=configs/wgan_0gp.py[:VARIANT]; the variants and every default, with the reasons, are
configs/ebm_bb.py's (make_config), shared by the three methods.
"""
from ebm_jax import configlib

make_config = configlib.load_sibling(__file__, "ebm_bb.py").make_config


def get_config(variant: str = ""):
    return make_config("wgan_0gp", variant)
