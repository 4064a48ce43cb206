"""Kim & Bengio (2016), "Deep directed generative models with energy-based probability estimation".

One iteration (one compiled call):
  energy (DEM), Eq. 12:     mean E(x+) - mean E(G(z)),  z ~ U(-1, 1)^d, G's samples held fixed
  generator (DGM), Eq. 13-15: mean E(G(z)) - w * sum_a 0.5 log(2 pi e gamma_a^2)
where gamma_a are the batch-norm scale parameters of every normalised activation of G (Eq. 15's
entropy surrogate; w = method.entropy_weight, 1 in the paper). The energy is the product of experts of
Eq. 11 (models.ProductOfExpertsEnergy).

Batch norm: updates normalise with the statistics of the current (global, all-device) batch and
update running averages kept in the state; sampling and evaluation use the running averages.
"""
import math
from typing import Any, Dict

import ml_collections

import jax
import jax.numpy as jnp
import optax

from ebm_jax.data import toys as toy_names
from ebm_jax.methods.base import ConfigError, Generator, GeneratorEnergyMethod, check_positive, make_optimizer
from ebm_jax.models import (NORMALIZED_GENERATOR_KINDS, NormalizedGeneratorMLP, build_energy, build_generator,
                            is_normalized_generator)


def batch_norm_entropy(generator_params) -> jax.Array:
    """Eq. 15: sum over every batch-normalised activation a of 0.5 log(2 pi e gamma_a^2)."""
    scales = [v for k, v in generator_params.items() if k.startswith("bn_scale_")]
    total = jnp.zeros(())
    for g in scales:
        total = total + jnp.sum(0.5 * jnp.log(2.0 * math.pi * math.e * g ** 2))
    return total


def energy_loss(e_data, e_generated):
    """Eq. 12 as a loss: positive phase on data, negative phase on generator samples."""
    return jnp.mean(e_data) - jnp.mean(e_generated)


def generator_loss(e_generated, entropy, entropy_weight=1.0):
    """Eq. 13 with Eq. 14 (energy of the samples) and Eq. 15 (entropy surrogate)."""
    return jnp.mean(e_generated) - entropy_weight * entropy


class DeepDirectedGenerativeModel(GeneratorEnergyMethod):
    name = "ddgm"
    progress_metrics = ("energy_loss", "generator_loss", "entropy", "energy_real", "energy_generated")

    def __init__(self, config, data_shape):
        super().__init__(config, data_shape)
        check_positive(config, "method.entropy_weight", allow_zero=True)
        mc = config.model
        self.energy_net = build_energy(mc.energy, self.data_shape, self.compute_dtype)
        if mc.generator.get("kind", "mlp") == "mlp":
            net = NormalizedGeneratorMLP(tuple(int(h) for h in mc.generator.hidden), self.data_shape,
                                         mc.generator.activation, True, output=mc.generator.get("output", "linear"))
        else:  # batch-normalised image generators (DCGAN, ResNet, MEG's MNIST network)
            net = build_generator(mc.generator, self.data_shape, self.compute_dtype)
            if not is_normalized_generator(net):
                raise ConfigError(f"model.generator.kind {mc.generator.kind!r} has no batch norm, which Eq. 15's "
                                  f"entropy needs; use 'mlp' or one of {list(NORMALIZED_GENERATOR_KINDS)}.")
        self.gen = Generator(net)
        steps = int(config.train.num_steps)
        self.tx_energy = make_optimizer(config.optim, steps)
        self.tx_generator = make_optimizer(config.optim, steps)

    def init(self, key, example_batch) -> Dict[str, Any]:
        k_e, k_g = jax.random.split(key)
        x = jnp.zeros((2,) + self.data_shape, jnp.float32)
        z = jnp.zeros((2,) + self.latent_shape, jnp.float32)
        g_params, g_stats = self.gen.init(k_g, z)
        params = {"energy": self.energy_net.init(k_e, x)["params"], "generator": g_params}
        return {"params": params, "batch_stats": g_stats,
                "opt_state": {"energy": self.tx_energy.init(params["energy"]),
                              "generator": self.tx_generator.init(params["generator"])}}

    def energy(self, params, x):
        return self.energy_net.apply({"params": params["energy"]}, x)

    def train_step(self, state, batch, key):
        params, opt = state["params"], state["opt_state"]
        x = batch[0]
        k_e, k_g = jax.random.split(key)
        w = float(self.config.method.entropy_weight)

        x_neg = jax.lax.stop_gradient(self.gen.train_batch(params["generator"], state["batch_stats"],
                                                           self.prior(k_e, x.shape[0]), False)[0])

        def e_loss_fn(ep):
            e_pos = self.energy({"energy": ep}, x)
            e_neg = self.energy({"energy": ep}, x_neg)
            return energy_loss(e_pos, e_neg), {"energy_real": jnp.mean(e_pos), "energy_negative": jnp.mean(e_neg)}

        (e_loss, e_aux), e_grads = jax.value_and_grad(e_loss_fn, has_aux=True)(params["energy"])
        e_updates, e_opt = self.tx_energy.update(e_grads, opt["energy"], params["energy"])
        e_params = optax.apply_updates(params["energy"], e_updates)

        z = self.prior(k_g, x.shape[0])

        def g_loss_fn(gp):
            x_gen, _, new_stats = self.gen.train_batch(gp, state["batch_stats"], z, True)
            e_gen = self.energy({"energy": e_params}, x_gen)
            h = batch_norm_entropy(gp)
            return generator_loss(e_gen, h, w), (new_stats, {"energy_generated": jnp.mean(e_gen), "entropy": h})

        (g_loss, (new_stats, g_aux)), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(params["generator"])
        g_updates, g_opt = self.tx_generator.update(g_grads, opt["generator"], params["generator"])
        new_state = {"params": {"energy": e_params, "generator": optax.apply_updates(params["generator"], g_updates)},
                     "batch_stats": new_stats, "opt_state": {"energy": e_opt, "generator": g_opt}}
        return new_state, {**e_aux, **g_aux, "energy_loss": e_loss, "generator_loss": g_loss}


TOYS = tuple(toy_names.TOYS)  # every toy of ebm_jax/data/toys.py


def make_config(variant: str = "") -> ml_collections.ConfigDict:
    """configs/ddgm.py. VARIANT: a dataset, fourspin (default), twospirals (Kim & Bengio's Figure 2
    toys, 10,000 training points as in Sec. 4), any other toy, or mnist (fully connected, 128 experts,
    latent 10; the idx files in data.data_dir, default ../shared/data/mnist); stacked_mnist, cifar10,
    celeba, kdd and mnist_anomaly use the dataset's batch-normalised generator preset with the same
    energy (not in the paper).

    Toys (Sec. 4): energy 2-128-128 features with 4 experts, generator 4-128-128-2 with batch norm,
    latent 4, prior U(-1, 1), AdaGrad. The features use tanh: Sec. 3.1 argues integrability "with
    using bounded f", and with ReLU features the energy grew deep wells at the edge of the square,
    where the generator never goes (four-spin, 20k iterations: KL 6.15 with ReLU, 1.86 with tanh).
    sigma (Eq. 11), the learning rate, the batch size and the number of iterations are not in the
    paper; the values here are what the README's runs use.
    """
    from ebm_jax import configlib
    c = configlib.base_config()
    c.method.name = "ddgm"
    c.method.entropy_weight = 1.0     # weight of Eq. 15's term; the paper uses it unweighted
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
    tokens = configlib.parse_variant(variant, datasets=TOYS + configlib.DATA_VARIANTS)
    c.data.name = tokens.get("dataset", "fourspin")
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
    return c
