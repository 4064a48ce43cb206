"""SteinGAN (Algorithm 2) and SteinCD-GAN(alpha) (--config.method.alpha=A) of Liu & Wang 2017
("Learning Deep Energy Models: Contrastive Divergence vs. Amortized MLE").

Usage: --config=configs/steingan.py[:VARIANT]; the variants and every default, with the reasons, are
configs/steincd.py's (make_config), shared by the Stein methods.
"""
from ebm_jax import configlib

make_config = configlib.load_sibling(__file__, "steincd.py").make_config


def get_config(variant: str = ""):
    return make_config("steingan", variant)
