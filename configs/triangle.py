"""The divergence triangle (Han et al. 2020): a VAE trained jointly with a latent EBM f(x, z).

--config=configs/triangle.py[:VARIANT]; the variants (a toy, mnist, mnist,conv) and every default,
with the reasons, are in ebm_jax.methods.triangle.make_config.
"""
from ebm_jax.methods.triangle import make_config


def get_config(variant: str = ""):
    return make_config(variant)
