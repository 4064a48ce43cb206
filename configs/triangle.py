"""The divergence triangle (Han et al. 2020): a VAE trained jointly with a latent EBM f(x, z).

Usage: --config=configs/triangle.py[:VARIANT]; the variants and every default, with the reasons, are in
make_config below.
"""
import ml_collections

from ebm_jax import configlib
from ebm_jax.data.toys import TOYS as _TOYS

TOYS = tuple(_TOYS)  # every toy of ebm_jax/data/toys.py


def make_config(variant: str = "") -> ml_collections.ConfigDict:
    """configs/triangle.py. VARIANT: a toy (25gaussians by default, any toy of ebm_jax/data/toys.py), or
    mnist / mnist_anomaly (the idx files in data.data_dir, default ../shared/data/mnist), plus 'conv' for
    MNIST to use DCGAN-style networks (strided-convolution encoders, the deconvolutional generator)
    instead of MLPs; stacked_mnist, cifar10, celeba (convolutional networks with the dataset's
    DCGAN-family generator) and kdd (MLPs, MEG's KDD generator).

    Not given in the paper, chosen here: the network widths, sigma of p(x|z) (0.05 on the toys, whose
    modes have a std of 0.018; 0.3 on MNIST in [-1, 1]), Adam(1e-4 for the EBM, 3e-4 for the others
    in the official code; one lr here, 2e-4) with b1 = 0.5, the iteration counts, and on the toys Du &
    Mordatch's regulariser 0.1 on the latent EBM (method.energy_reg; not in the paper). Spectral
    normalisation of the latent EBM is on, as Sec. 5 says.
    """
    c = configlib.base_config()
    c.method.name = "triangle"
    c.method.sigma = 0.05                         # std of p(x|z) = N(g(z), sigma^2 I)
    c.method.inference_objective = "kl_difference"   # Eq. 15/20; 'kl_sum' = Eq. 17 ("Ours(+)")
    # Du & Mordatch's alpha (mean f(x, z~)^2 + mean f(x~, z)^2) on the latent EBM's loss; not in the paper
    c.method.energy_reg = 0.0
    c.model.latent_dim = 2
    c.model.generator = ml_collections.ConfigDict({"kind": "mlp", "hidden": (128, 128, 128), "activation": "relu"})
    c.model.inference = ml_collections.ConfigDict({"kind": "mlp", "hidden": (128, 128, 128), "activation": "leaky_relu",
                                                   "channels": 32})
    c.model.energy = ml_collections.ConfigDict({"kind": "mlp", "encoder_hidden": (128, 128), "features": 64,
                                                "hidden": (128,), "activation": "leaky_relu", "spectral_norm": True,
                                                "channels": 32, "scale_init": 1.0})
    del c.model["statistics"]
    c.optim.name = "adam"
    c.optim.lr = 2e-4
    c.optim.b1 = 0.5
    c.optim.b2 = 0.999
    c.data.batch_size = 100
    c.train.num_steps = 20_000
    c.train.log_every = 200
    c.train.eval_every = 0
    c.train.checkpoint_every = 5000
    c.eval.num_reconstruct = 10_000               # held-out examples for the reconstruction RMSE
    tokens = configlib.parse_variant(variant, datasets=TOYS + configlib.DATA_VARIANTS, extras=("conv",))
    c.data.name = tokens.get("dataset", "25gaussians")
    token = c.data.name
    if token in ("stacked_mnist", "cifar10", "celeba"):
        # convolutional everywhere (Sec. 5: DCGAN generator, "mirror" encoders), the dataset's generator preset
        configlib.apply_data_variant(c, token, roles=("generator",))
        c.method.sigma = 0.3
        c.model.inference.kind = "conv"
        c.model.energy.kind = "conv"
        c.model.energy.features = 128
        c.model.energy.hidden = (256,)
        c.data.batch_size = 100
        c.train.num_steps = 20_000
    elif token == "kdd":
        configlib.apply_data_variant(c, token, roles=("generator",))
        c.method.sigma = 0.1                      # the features are min-max scaled to [0, 1]
        c.data.batch_size = 256
    elif token in ("mnist", "mnist_anomaly"):
        c.data.name = token
        c.data.data_dir = "../shared/data/mnist"
        c.train.steps_per_call = 1
        c.method.sigma = 0.3
        c.model.latent_dim = 16
        c.model.generator = ml_collections.ConfigDict({"kind": "mlp", "hidden": (512, 512), "activation": "relu",
                                                       "width": 512, "channels": 32})
        c.model.inference.hidden = (512, 512)
        c.model.energy.encoder_hidden = (512, 256)
        c.model.energy.features = 128
        c.model.energy.hidden = (256,)
        c.train.num_steps = 10_000
        c.eval.num_samples = 64
        c.eval.mcmc = False
        c.sampling.num_samples = 64
        c.sampling.step_size = 1e-3
        if "conv" in tokens["extras"]:
            c.model.generator.kind = "deconv"
            c.model.inference.kind = "conv"
            c.model.energy.kind = "conv"
    elif "conv" in tokens["extras"]:
        raise ValueError("config variant 'conv' needs image data; use it as mnist,conv.")
    if token == "mnist_anomaly":
        c.data.batch_size = 64
        c.train.num_steps = 55 * 777          # 55 epochs, as MEG's anomaly runs
    if token in TOYS:
        # Tuned for the energy as a density (bench/density_benchmark.py, 3 seeds; docs/methods/triangle.md):
        # without it the latent EBM's highest density was one small spike on every toy. Weight 0.03 / 0.1
        # / 0.3: bands 0.93 / 0.64 / 1.57, twospirals 1.22 / 0.72 / 0.96
        c.method.energy_reg = 0.1
    return c


def get_config(variant: str = ""):
    return make_config(variant)
