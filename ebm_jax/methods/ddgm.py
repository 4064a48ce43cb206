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

import jax
import jax.numpy as jnp
import optax

from ebm_jax import estimators, parallel
from ebm_jax.methods.base import (ConfigError, Generator, GeneratorEnergyMethod, add_energy_regulariser, check_positive,
                                  make_optimizer, optional_weight)
from ebm_jax.models import (NORMALIZED_GENERATOR_KINDS, NormalizedGeneratorMLP, build_energy, build_generator,
                            is_normalized_generator)


def batch_norm_entropy(generator_params) -> jax.Array:
    """Eq. 15: sum over every batch-normalised activation a of 0.5 log(2 pi e gamma_a^2)."""
    scales = [v for k, v in generator_params.items() if k.startswith("bn_scale_")]
    if not scales:
        # a generator without batch norm has no gamma: the entropy term would silently be 0
        raise ConfigError("the generator has no batch-norm scale parameters (bn_scale_*), which Eq. 15's entropy "
                          "needs; build it with batch norm (model.generator.batch_norm=True).")
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
        self.penalty_weight = optional_weight(config, "method.penalty_weight", 0.0)
        self.energy_reg = optional_weight(config, "method.energy_reg", 0.0)
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
            if not mc.generator.get("batch_norm", True):
                raise ConfigError(f"model.generator.batch_norm=False leaves the {mc.generator.kind!r} generator without "
                                  "the batch-norm scales that Eq. 15's entropy is made of; set it to True.")
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
                                                           parallel.shard_rows(self.prior(k_e, x.shape[0])), False)[0])

        lam, alpha = self.penalty_weight, self.energy_reg

        def e_loss_fn(ep):
            energy_fn = lambda v: self.energy({"energy": ep}, v)  # noqa: E731
            if lam:
                # not in the paper: MEG's zero-centred penalty on data, which keeps Eq. 12's contrast from
                # digging a well without bound where the generator under-samples (see configs/ddgm.py)
                e_pos, penalty = estimators.energy_and_gradient_penalty(energy_fn, x)
            else:
                e_pos, penalty = energy_fn(x), jnp.zeros(())
            e_neg = energy_fn(x_neg)
            return add_energy_regulariser(
                energy_loss(e_pos, e_neg) + lam * penalty,
                {"energy_real": jnp.mean(e_pos), "energy_negative": jnp.mean(e_neg), "penalty": penalty},
                alpha, e_pos, e_neg)

        (e_loss, e_aux), e_grads = jax.value_and_grad(e_loss_fn, has_aux=True)(params["energy"])
        e_updates, e_opt = self.tx_energy.update(e_grads, opt["energy"], params["energy"])
        e_params = optax.apply_updates(params["energy"], e_updates)

        z = parallel.shard_rows(self.prior(k_g, x.shape[0]))

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
