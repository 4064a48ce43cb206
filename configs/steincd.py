"""SteinCD (Algorithm 1) and the CD-k baseline (variants cd1, cd10) of Wang & Liu 2017.

--config=configs/steincd.py[:VARIANT]; the variants and every default, with the reasons, are in
ebm_jax.methods.stein.make_config.
"""
from ebm_jax.methods.stein import make_config


def get_config(variant: str = ""):
    return make_config("steincd", variant)
