"""EBM-0GP: the lower bound with a zero-centred gradient penalty (Geng et al. 2021), see ebm_jax/methods/ebm_bb.py.

Usage: --config=configs/ebm_0gp.py[:VARIANT], VARIANT = comma-separated tokens:
  a dataset: 25gaussians (default), 8gaussians, swissroll, checkerboard, or mnist (reads the idx files
  from data.data_dir, default ../shared/data/mnist; Table 7 MLPs, latent 128, batch 64, 60 epochs);
  'paper': the paper's 150k toy iterations instead of this project's 20k.

Defaults follow Tables 6 and 11 (2-100-100 PReLU networks, BN in the generator, Adam(0, 0.9), lr 2e-4,
batch 200, latent 2), with 20k iterations on the toys so that a run takes minutes on a CPU. The
entropy is d log s_1 with s_1 from LOBPCG (method.lobpcg_iters, warm-started); method.entropy='exact'
uses 0.5 log det J^T J instead (small latent sizes only).
"""
from ebm_jax.methods.ebm_bb import make_config


def get_config(variant: str = ""):
    return make_config("ebm_0gp", variant)
