"""Kim & Bengio (2016), deep directed generative models with energy-based probability estimation.

Usage: --config=configs/ddgm.py[:VARIANT]; the variants and every default, with the reasons, are in
make_config below.
"""
import ml_collections

from ebm_jax import configlib
from ebm_jax.data.toys import TOYS as _TOYS

TOYS = tuple(_TOYS)  # every toy of ebm_jax/data/toys.py


def make_config(variant: str = "") -> ml_collections.ConfigDict:
    """configs/ddgm.py. VARIANT: a dataset, fourspin (default), twospirals (Kim & Bengio's Figure 2
    toys, 10,000 training points as in Sec. 4), any other toy, mnist (fully connected, 128 experts,
    latent 10; the idx files in data.data_dir, default ../shared/data/mnist), or celeba (Sec. 4's
    64x64 model: 4 convolutional layers of 5x5 filters each, DEM 128-256-512-1024 feature maps and
    1024 experts, DGM 1024-512-256-128, latent 100); cifar10 uses the same family at 32x32 (not in the
    paper); stacked_mnist, kdd and mnist_anomaly use the dataset's batch-normalised generator preset with
    MLP experts (not in the paper).

    Toys (Sec. 4): energy 2-128-128 features with 4 experts, generator 4-128-128-2 with batch norm,
    latent 4, prior U(-1, 1), AdaGrad. The features use tanh: Sec. 3.1 argues integrability "with
    using bounded f", and with ReLU features the energy grew deep wells at the edge of the square,
    where the generator never goes (four-spin, 20k iterations: KL 6.15 with ReLU, 1.86 with tanh).
    sigma (Eq. 11), the learning rate, the batch size and the number of iterations are not in the
    paper; the values here are what the runs in docs/methods/ddgm.md use.
    """
    c = configlib.base_config()
    c.method.name = "ddgm"
    c.method.entropy_weight = 1.0     # weight of Eq. 15's term; the paper uses it unweighted
    # lambda of a zero-centred gradient penalty on data, not in the paper: Eq. 12's contrast alone dug one
    # deep well where the generator under-sampled (on the seven-component mixture `sevenaniso`, all its
    # density on the lightest component: KL 12.5; one seed, 20k iterations). Measured there and on four
    # spin: lambda 0 / 0.001 / 0.003 / 0.01 gave KL 12.5 / 3.08 / 1.50 / 1.70 and 2.19 / 1.78 / 1.72 / 1.90.
    # With three seeds on five toys (docs/methods/ddgm.md), 0.01 and 0.03 do not remove the 8-Gaussians
    # spike either and 0.03 costs on sevenaniso. 'paper' and the real-data variants keep 0.
    c.method.penalty_weight = 0.003
    # alpha, the weight of Du & Mordatch's regulariser alpha (mean E(x+)^2 + mean E(x-)^2), not in the paper.
    # Eq. 12's gradient vanishes only where the generator matches the data; where it cannot (modes far
    # narrower than its samples' spread), the contrast deepens the data's wells without bound and the
    # deepest one takes the density (8-Gaussians, alpha 0, seed 0: data energy -25 at 2k iterations,
    # -109 at 20k; 34% of the mass within 3 std of one centre, none near the other seven); the gradient
    # penalty above does not stop it. Three seeds on all eight toys (docs/methods/ddgm.md), alpha
    # 0 / 0.001 / 0.003 / 0.01 / 0.1: 8-Gaussians 11.26 / 7.37 / 3.51 / 3.06 / 3.75, mean over the eight
    # 3.32 / 2.74 / 2.31 / 2.30 / -. 0.003 ties 0.01's mean at a smaller cost on sevenaniso (1.67 against
    # 1.99; 1.60 at 0), but does not remove the collapse in every run: a fourth run of seed 0 alone left
    # 26% of the mass in one well, 4 to 9 nats deeper than the other seven, where at 0.01 the eight wells
    # lay within 3.2 nats of each other.
    c.method.energy_reg = 0.01
    c.model.latent_dim = 4
    c.model.prior = "uniform"         # Sec. 3.2: z ~ U(-1, 1); 'gaussian' as the option
    c.model.energy = ml_collections.ConfigDict({"kind": "product_of_experts", "hidden": (128, 128),
                                                "num_experts": 4, "sigma": 1.0, "activation": "tanh"})
    c.model.generator = ml_collections.ConfigDict({"hidden": (128, 128), "activation": "relu", "output": "linear"})
    del c.model["statistics"]
    c.optim.name = "adagrad"          # Sec. 4; 'adam' as the option
    c.optim.lr = 0.01
    c.data.batch_size = 100
    c.data.num_train = 10_000         # Sec. 4: 10,000 points per toy
    c.train.num_steps = 20_000
    c.train.log_every = 200
    c.train.eval_every = 0
    c.train.checkpoint_every = 5000
    c.sampling.space = "latent"
    tokens = configlib.parse_variant(variant, datasets=TOYS + configlib.DATA_VARIANTS, extras=("paper",))
    if "paper" in tokens["extras"]:
        c.method.penalty_weight = 0.0
        c.method.energy_reg = 0.0
    c.data.name = tokens.get("dataset", "fourspin")
    if c.data.name in configlib.DATA_VARIANTS:
        c.method.penalty_weight = 0.0
        c.method.energy_reg = 0.0
    if c.data.name in configlib.DATA_VARIANTS and c.data.name != "mnist":
        # The paper has MNIST only (fully connected). Elsewhere: the dataset's batch-normalised generator
        # preset (Eq. 15 reads its BN scales; an MLP with BN for KDD), the Eq. 11 energy over MLP features
        token = c.data.name
        configlib.apply_data_variant(c, token, roles=("generator",))
        c.model.latent_dim = 10 if token != "kdd" else c.model.latent_dim
        if token == "kdd":
            c.model.generator = ml_collections.ConfigDict({"hidden": (64, 128), "activation": "relu",
                                                           "output": "linear"})
        c.model.energy.hidden = (1024, 512) if token != "kdd" else (256, 128)
        c.model.energy.num_experts = 128 if token != "kdd" else 32
        if token in ("celeba", "cifar10"):
            # Sec. 4: DCGAN-style convolutions, all filters 5x5; 1024 experts, 100-dimensional z. Not given
            # there, chosen here: LeakyReLU(0.2) features, no Dense layer between them and the experts.
            from ebm_jax.models import network_config
            c.model.generator = network_config("generator", "ddgm_conv")
            c.model.energy = ml_collections.ConfigDict({"kind": "product_of_experts", "feature_extractor": "conv", "width": 128,
                                                        "hidden": (), "num_experts": 1024, "sigma": 1.0,
                                                        "activation": "leaky_relu"})
            c.model.latent_dim = 100
        c.data.batch_size = 100
        c.train.num_steps = 10_000
    elif c.data.name == "mnist":
        # Sec. 4: fully connected networks, 128 experts, 10-dimensional z
        c.data.data_dir = "../shared/data/mnist"
        c.train.steps_per_call = 1
        c.model.latent_dim = 10
        c.model.energy.hidden = (1024, 512)
        c.model.energy.num_experts = 128
        c.model.generator.hidden = (512, 1024)
        # not in the paper: tanh outputs, so that samples live in the images' [-1, 1] (with a linear
        # output, 10k iterations gave noise-like samples and data energies of -1e5)
        c.model.generator.output = "tanh"
        c.train.num_steps = 10_000
        c.eval.num_samples = 64
        c.eval.mcmc = False
        c.sampling.num_samples = 64
    if c.data.name in TOYS and "paper" not in tokens["extras"]:
        configlib.set_toy_temperature(c)   # the reported density's temperature: configlib says how it was chosen
    return c


def get_config(variant: str = ""):
    return make_config(variant)
