"""SteinGAN (Algorithm 2) and SteinCD-GAN(alpha) (--config.method.alpha=A) of Wang & Liu 2017.

--config=configs/steingan.py[:VARIANT]; the variants and every default, with the reasons, are in
ebm_jax.methods.stein.make_config.
"""
from ebm_jax.methods.stein import make_config


def get_config(variant: str = ""):
    return make_config("steingan", variant)
