"""MEG: Maximum Entropy Generators for Energy-Based Models (Kumar et al. 2019), Algorithm 1.

One iteration = n_critic energy updates (Eq. 9 plus the zero-centred gradient penalty of Sec. 3.1),
then one joint update of the generator (Eq. 8) and the statistics network T(x, z) (Eq. 7), all inside
one compiled call. The critic updates run as an unrolled loop over the n_critic real batches.
"""
from typing import Any, Dict

import jax
import jax.numpy as jnp
import optax

from ebm_jax import estimators, kernels, parallel
from ebm_jax.methods.base import (Generator, GeneratorEnergyMethod, add_energy_regulariser, check_positive, make_optimizer,
                                  optional_weight)
from ebm_jax.models import build_energy, build_generator, build_statistics


def energy_loss(energy_fn, x_real, x_fake, penalty_weight, energy_reg=0.0):
    """L_E of Algorithm 1: mean E(x) - mean E(G(z)) + lambda * mean ||grad_x E(x)||^2 on real x, plus
    alpha (mean E(x)^2 + mean E(G(z))^2) when alpha = energy_reg > 0 (not in the paper; Du & Mordatch's
    regulariser, estimators.energy_magnitude_penalty)."""
    e_real, penalty = estimators.energy_and_gradient_penalty(energy_fn, x_real)  # one forward on x_real
    e_fake = energy_fn(x_fake)
    loss = jnp.mean(e_real) - jnp.mean(e_fake) + penalty_weight * penalty
    aux = {"energy_real": jnp.mean(e_real), "energy_fake": jnp.mean(e_fake), "penalty": penalty}
    return add_energy_regulariser(loss, aux, energy_reg, e_real, e_fake)


def generator_loss(energy_fn, statistics_fn, x_fake, z, z_shuffled, entropy_weight=1.0):
    """L_G = mean E(G(z)) - w I_JSD(G(z), z)   (Eq. 8 with w = 1); T maximises the same w I_JSD (Eq. 7).

    w = 0.5 is the official code's weight: it adds BCEWithLogits over the 2m concatenated (joint,
    marginal) pairs, whose mean is L_H / 2 = -I_JSD / 2, to mean E(G(z)). For T alone the factor does
    not move the optimum; for G it halves the entropy term against the energy."""
    mi = estimators.jsd_mutual_information(statistics_fn(x_fake, z), statistics_fn(x_fake, z_shuffled))
    e_gen = jnp.mean(energy_fn(x_fake))
    return e_gen - entropy_weight * mi, {"energy_generated": e_gen, "mutual_information": mi}


class MEG(GeneratorEnergyMethod):
    name = "meg"
    progress_metrics = ("energy_loss", "generator_loss", "mutual_information", "penalty")

    def __init__(self, config, data_shape):
        super().__init__(config, data_shape)
        check_positive(config, "method.n_critic", integer=True)
        check_positive(config, "method.penalty_weight", allow_zero=True)
        self.entropy_weight = optional_weight(config, "method.entropy_weight", 1.0)   # Eq. 8's weight
        m = config.model
        self.energy_net = build_energy(m.energy, self.data_shape, self.compute_dtype)
        self.gen = Generator(build_generator(m.generator, self.data_shape, self.compute_dtype))
        self.statistics_net = build_statistics(m.statistics, self.data_shape, self.compute_dtype)
        self.batches_per_step = int(config.method.n_critic)
        steps = int(config.train.num_steps)
        self.tx_energy = make_optimizer(config.optim, steps * self.batches_per_step)
        self.tx = make_optimizer(config.optim, steps)  # generator and statistics network
        self.penalty_weight = float(config.method.penalty_weight)
        self.energy_reg = optional_weight(config, "method.energy_reg", 0.0)

    def init(self, key, example_batch) -> Dict[str, Any]:
        k_e, k_g, k_t = jax.random.split(key, 3)
        x = jnp.zeros((1,) + self.data_shape, jnp.float32)
        z = jnp.zeros((1,) + self.latent_shape, jnp.float32)
        g_params, g_stats = self.gen.init(k_g, z)
        params = {
            "energy": self.energy_net.init(k_e, x)["params"],
            "generator": g_params,
            "statistics": self.statistics_net.init(k_t, x, z)["params"],
        }
        opt_state = {k: (self.tx_energy if k == "energy" else self.tx).init(v) for k, v in params.items()}
        return {"params": params, "opt_state": opt_state, **self.gen.state_entries(g_stats)}

    def energy(self, params, x):
        return self.energy_net.apply({"params": params["energy"]}, x)

    def train_step(self, state, batch, key):
        """batch: (n_critic, B, *data_shape) real examples for this iteration."""
        params, opt_state = state["params"], state["opt_state"]
        g_stats = state.get("batch_stats", {})
        batch_size = batch.shape[1]
        k_critic, k_z, k_shuffle = jax.random.split(key, 3)

        def critic_update(carry, inputs):
            e_params, e_opt = carry
            x_real, k = inputs
            # the generator in training mode (batch statistics), as the critic sees it in the reference
            z_c = parallel.shard_rows(self.prior(k, batch_size))   # per-example work on each device's rows
            x_fake = self.gen.train_batch(params["generator"], g_stats, z_c, False)[0]
            grad_fn = jax.grad(lambda p: energy_loss(
                lambda v: self.energy({"energy": p}, v), x_real, x_fake, self.penalty_weight, self.energy_reg),
                has_aux=True)
            grads, aux = grad_fn(e_params)
            updates, e_opt = self.tx_energy.update(grads, e_opt, e_params)
            return (optax.apply_updates(e_params, updates), e_opt), aux

        keys = jax.random.split(k_critic, self.batches_per_step)
        carry = (params["energy"], opt_state["energy"])
        if kernels.cpu_rewrites():
            # A Python loop (n_critic is small, so is the program), not lax.scan: inside a while loop
            # XLA:CPU compiled the StackedMNIST critic steps 2.7x slower (800 vs 300 ms per iteration with 5
            # critic steps), and even a fully unrolled scan kept the DCGAN energy's weight-gradient
            # convolutions in a layout XLA:CPU runs several times slower (docs/performance.md's 32x32 speed table)
            for i in range(self.batches_per_step):
                carry, last = critic_update(carry, (batch[i], keys[i]))
        else:  # one compiled step body, n_critic times: the program and its compile time stay small
            carry, lasts = jax.lax.scan(critic_update, carry, (batch, keys))
            last = jax.tree_util.tree_map(lambda a: a[-1], lasts)
        e_params, e_opt = carry

        z = parallel.shard_rows(self.prior(k_z, batch_size))
        z_shuffled = parallel.shard_rows(estimators.shuffle_per_dimension(k_shuffle, z))

        def gen_loss_fn(gt_params):
            g_params, t_params = gt_params
            x_fake, _, new_stats = self.gen.train_batch(g_params, g_stats, z, True)
            loss, aux = generator_loss(
                lambda v: self.energy({"energy": e_params}, v),
                lambda xx, zz: self.statistics_net.apply({"params": t_params}, xx, zz),
                x_fake, z, z_shuffled, self.entropy_weight)
            return loss, (aux, new_stats)

        (g_grads, t_grads), (gen_metrics, new_stats) = jax.grad(gen_loss_fn, has_aux=True)(
            (params["generator"], params["statistics"]))
        g_updates, g_opt = self.tx.update(g_grads, opt_state["generator"], params["generator"])
        t_updates, t_opt = self.tx.update(t_grads, opt_state["statistics"], params["statistics"])
        new_params = {
            "energy": e_params,
            "generator": optax.apply_updates(params["generator"], g_updates),
            "statistics": optax.apply_updates(params["statistics"], t_updates),
        }
        new_opt = {"energy": e_opt, "generator": g_opt, "statistics": t_opt}
        metrics = {
            "energy_loss": (last["energy_real"] - last["energy_fake"] + self.penalty_weight * last["penalty"]
                            + self.energy_reg * last.get("regulariser", 0.0)),
            **last,
            "generator_loss": gen_metrics["energy_generated"] - self.entropy_weight * gen_metrics["mutual_information"],
            **gen_metrics,
        }
        return {"params": new_params, "opt_state": new_opt, **self.gen.state_entries(new_stats)}, metrics
