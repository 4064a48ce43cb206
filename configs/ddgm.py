"""Kim & Bengio's deep directed generative model (product-of-experts energy, batch-norm entropy term).

--config=configs/ddgm.py[:VARIANT]; the variants (fourspin, twospirals, the other toys, mnist) and every
default, with the reasons, are in ebm_jax.methods.ddgm.make_config.
"""
from ebm_jax.methods.ddgm import make_config


def get_config(variant: str = ""):
    return make_config(variant)
