"""Stein methods (Liu & Wang 2017, "Learning Deep Energy Models: Contrastive Divergence vs. Amortized
MLE"): SteinCD (Algorithm 1), CD-k with Langevin dynamics (the baseline of Figure 1(a)),
Stein score matching (Eqs. 15-17), SteinGAN (Algorithm 2) and SteinCD-GAN(alpha).

Energies are E = -f (the paper writes p = exp(f) / Z). Every update below is a loss whose gradient
descent is the paper's update:

  SteinCD / CD-k  mean E(x+) - mean E(x-),  x- = one SVGD step from x+ (Eq. 13) or k Langevin steps (Eq. 11)
  symmetric       mean E(x+ - eps phi) - mean E(x+ + eps phi)                               (Eq. 17)
  score matching  mean grad_x f(x+) . phi(x+), phi held fixed (jvp)                          (Eq. 15)
  SteinGAN        energy: mean E(x+) - (1 - gamma) mean E(x-), x- = G(xi)                   (Eq. 23 + stabilisation)
                  generator: -mean <G(xi), phi*(G(xi))>, phi* held fixed                    (Eq. 21)

SteinCD-GAN(alpha): each iteration, with probability alpha the energy's negatives are the SVGD-moved
data of SteinCD instead of the generator's samples (Sec. 5.1); the generator is trained every
iteration. alpha = 0 is SteinGAN.
"""
from typing import Any, Dict

import ml_collections

import jax
import jax.numpy as jnp
import optax

from ebm_jax import estimators, parallel
from ebm_jax.estimators.stein import KERNELS
from ebm_jax.methods.base import (ConfigError, EnergyOnlyMethod, Generator, GeneratorEnergyMethod, add_energy_regulariser,
                                  check_positive, make_optimizer, optional_weight)
from ebm_jax.models import build_energy, build_generator, rbm_log_partition

SAMPLERS = ("svgd", "langevin")
UPDATES = ("cd", "symmetric", "score_matching")


def contrastive_loss(e_pos, e_neg, gamma=0.0):
    """mean E(x+) - (1 - gamma) mean E(x-): Eqs. 11, 13 and 23 (gamma: SteinGAN's discount, Sec. 5.2)."""
    return jnp.mean(e_pos) - (1.0 - gamma) * jnp.mean(e_neg)


def amortized_svgd_loss(x_generated, phi):
    """-(1/m) sum_i <G(xi_i), phi_i> with phi fixed: its negative gradient in eta is Eq. 21's update."""
    phi = jax.lax.stop_gradient(phi)
    return -jnp.sum(x_generated * phi) / x_generated.shape[0]


class _EnergyModelMixin:
    """Energy built from model.energy.kind; exact log Z when the energy is an RBM."""

    def _build_energy(self, config):
        self.energy_net = build_energy(config.model.energy, self.data_shape, self.compute_dtype)
        self.energy_kind = config.model.energy.get("kind", "mlp")

    def energy(self, params, x):
        return self.energy_net.apply({"params": params["energy"]}, x)

    def log_partition(self, params):
        """Exact log Z (RBM energies), else None; evaluation then reports the exact test log-likelihood."""
        if self.energy_kind != "rbm":
            return None
        return rbm_log_partition(params["energy"], int(self.config.model.energy.num_hidden))

    def _kernel_kwargs(self, e_params):
        m = self.config.method
        kw = {"kernel": m.kernel, "bandwidth": float(m.bandwidth) or None,
              "bandwidth_scale": float(m.get("bandwidth_scale", 1.0))}
        if m.get("kernel_features", False):
            if self.energy_kind != "autoencoder":
                raise ConfigError("method.kernel_features=True needs model.energy.kind='autoencoder' (the kernel "
                                  "is on the autoencoder's code, SteinGAN Sec. 5.2).")
            kw["features"] = lambda v: self.energy_net.apply(
                {"params": e_params}, v[None], method=self.energy_net.encode)[0]
        return kw

    def _svgd_moved(self, e_params, x, step_size):
        """x + eps phi*(x) with grad log p = -grad_x E at the current (fixed) energy."""
        e_params = jax.lax.stop_gradient(e_params)
        score = -estimators.input_gradients(lambda v: self.energy({"energy": e_params}, v), x)
        phi = estimators.svgd_direction(x, score, **self._kernel_kwargs(e_params))
        return x + step_size * phi, phi


def _check_common(config):
    m = config.method
    if m.kernel not in KERNELS:
        raise ConfigError(f"method.kernel {m.kernel!r} is unknown; valid kernels are {list(KERNELS)}.")
    check_positive(config, "method.bandwidth", allow_zero=True)
    check_positive(config, "method.step_size")


class SteinCD(_EnergyModelMixin, EnergyOnlyMethod):
    """SteinCD (sampler='svgd') and CD-k with Langevin dynamics (sampler='langevin'): an energy alone.

    There is no generator: sampling runs data-space MALA from N(0, I) (config.sampling)."""
    name = "steincd"
    progress_metrics = ("energy_loss", "energy_real", "energy_negative")

    def __init__(self, config, data_shape):
        super().__init__(config, data_shape)
        m = config.method
        self.name = m.name
        _check_common(config)
        if m.sampler not in SAMPLERS:
            raise ConfigError(f"method.sampler {m.sampler!r} is unknown; valid samplers are {list(SAMPLERS)}.")
        if m.update_rule not in UPDATES:
            raise ConfigError(f"method.update_rule {m.update_rule!r} is unknown; valid updates are {list(UPDATES)}.")
        if m.update_rule != "cd" and m.sampler != "svgd":
            raise ConfigError(f"method.update_rule={m.update_rule!r} uses the SVGD direction; it needs method.sampler='svgd'.")
        check_positive(config, "method.k", integer=True)
        # alpha of Du & Mordatch's regulariser alpha (mean E(x+)^2 + mean E(x-)^2), not in the paper (0)
        self.energy_reg = optional_weight(config, "method.energy_reg", 0.0)
        self._build_energy(config)
        self.tx_energy = make_optimizer(config.optim, int(config.train.num_steps))

    def init(self, key, example_batch) -> Dict[str, Any]:
        x = jnp.zeros((2,) + self.data_shape, jnp.float32)
        params = {"energy": self.energy_net.init(key, x)["params"]}
        return {"params": params, "opt_state": {"energy": self.tx_energy.init(params["energy"])}}

    def negatives(self, e_params, x, key):
        """x- of the contrastive update and the SVGD direction at x (None for Langevin)."""
        m = self.config.method
        if m.sampler == "langevin":
            e_params = jax.lax.stop_gradient(e_params)
            log_prob = lambda v: -self.energy({"energy": e_params}, v)
            return estimators.langevin_chain(log_prob, x, key, int(m.k), float(m.step_size)), None
        x_neg, phi0 = self._svgd_moved(e_params, x, float(m.step_size))
        for _ in range(int(m.k) - 1):
            x_neg, _ = self._svgd_moved(e_params, x_neg, float(m.step_size))
        return jax.lax.stop_gradient(x_neg), jax.lax.stop_gradient(phi0)

    def train_step(self, state, batch, key):
        m = self.config.method
        x = batch[0]
        e_params = state["params"]["energy"]
        x_neg, phi = self.negatives(e_params, x, key)
        eps = float(m.step_size)

        def loss_fn(p):
            energy_fn = lambda v: self.energy({"energy": p}, v)
            e_pos = energy_fn(x)
            if m.update_rule == "cd":
                e_neg = energy_fn(x_neg)
                loss = contrastive_loss(e_pos, e_neg)
            elif m.update_rule == "symmetric":
                e_neg = energy_fn(x + eps * phi)
                loss = jnp.mean(energy_fn(x - eps * phi)) - jnp.mean(e_neg)
            else:
                e_neg = energy_fn(x_neg)
                loss = estimators.stein_score_matching(lambda v: -energy_fn(v), x, phi, "exact")
            aux = {"energy_real": jnp.mean(e_pos), "energy_negative": jnp.mean(e_neg)}
            return add_energy_regulariser(loss, aux, self.energy_reg, e_pos, e_neg)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(e_params)
        updates, e_opt = self.tx_energy.update(grads, state["opt_state"]["energy"], e_params)
        new_state = {"params": {"energy": optax.apply_updates(e_params, updates)}, "opt_state": {"energy": e_opt}}
        return new_state, {**aux, "energy_loss": loss}


class SteinGAN(_EnergyModelMixin, GeneratorEnergyMethod):
    """SteinGAN (Algorithm 2) and SteinCD-GAN(alpha) (method.alpha > 0)."""
    name = "steingan"
    progress_metrics = ("energy_loss", "generator_loss", "energy_real", "energy_negative")

    def __init__(self, config, data_shape):
        super().__init__(config, data_shape)
        m = config.method
        _check_common(config)
        check_positive(config, "method.alpha", allow_zero=True)
        if m.alpha > 1:
            raise ConfigError(f"method.alpha={m.alpha} is invalid; it is a probability in [0, 1].")
        check_positive(config, "method.gamma", allow_zero=True)
        check_positive(config, "method.gamma_fast", allow_zero=True)
        if m.gamma >= 1 or m.gamma_fast >= 1:
            raise ConfigError(f"method.gamma={m.gamma} / gamma_fast={m.gamma_fast} must be below 1 (Sec. 5.2 uses 0.7 / 0.9).")
        # alpha of Du & Mordatch's regulariser alpha (mean E(x+)^2 + mean E(x-)^2), not in the paper (0)
        self.energy_reg = optional_weight(config, "method.energy_reg", 0.0)
        self._build_energy(config)
        self.gen = Generator(build_generator(config.model.generator, self.data_shape, self.compute_dtype))
        steps = int(config.train.num_steps)
        self.tx_energy = make_optimizer(config.optim, steps)
        g_optim = ml_collections.ConfigDict(config.optim.to_dict())
        g_optim.lr = float(config.optim.get("generator_lr", 0.0) or config.optim.lr)
        self.tx_generator = make_optimizer(g_optim, steps)

    def init(self, key, example_batch) -> Dict[str, Any]:
        k_e, k_g = jax.random.split(key)
        x = jnp.zeros((2,) + self.data_shape, jnp.float32)
        z = jnp.zeros((2,) + self.latent_shape, jnp.float32)
        g_params, g_stats = self.gen.init(k_g, z)
        params = {"energy": self.energy_net.init(k_e, x)["params"], "generator": g_params}
        return {"params": params, "opt_state": {"energy": self.tx_energy.init(params["energy"]),
                                                "generator": self.tx_generator.init(params["generator"])},
                **self.gen.state_entries(g_stats)}

    def train_step(self, state, batch, key):
        m = self.config.method
        x = batch[0]
        params, opt = state["params"], state["opt_state"]
        k_z, k_mix = jax.random.split(key)
        z = parallel.shard_rows(self.prior(k_z, x.shape[0]))

        # Steps 2-3: x- = G(xi); the generator follows phi* at its own samples (amortized SVGD, Eq. 21).
        g_stats = state.get("batch_stats", {})
        x_gen, _, new_stats = self.gen.train_batch(params["generator"], g_stats, z, True)
        e_fixed = jax.lax.stop_gradient(params["energy"])
        score = -estimators.input_gradients(lambda v: self.energy({"energy": e_fixed}, v), x_gen)
        phi = estimators.svgd_direction(x_gen, score, **self._kernel_kwargs(e_fixed))
        g_loss, g_grads = jax.value_and_grad(
            lambda gp: amortized_svgd_loss(self.gen.train_batch(gp, g_stats, z, False)[0], phi))(params["generator"])
        g_updates, g_opt = self.tx_generator.update(g_grads, opt["generator"], params["generator"])

        # Step 4 with the mixture: SteinCD's negatives with probability alpha (Sec. 5.1).
        x_neg = jax.lax.stop_gradient(x_gen)
        use_cd = jnp.asarray(False)
        if m.alpha > 0:
            x_cd, _ = self._svgd_moved(params["energy"], x, float(m.step_size))
            use_cd = jax.random.bernoulli(k_mix, float(m.alpha))
            x_neg = jnp.where(use_cd, jax.lax.stop_gradient(x_cd), x_neg)

        def loss_fn(p):
            e_pos = self.energy({"energy": p}, x)
            e_neg = self.energy({"energy": p}, x_neg)
            # Sec. 5.2's speed-up: a larger discount while the real batch has the higher energy
            behind = jax.lax.stop_gradient(jnp.mean(e_pos) > jnp.mean(e_neg))
            gamma = jnp.where(behind & (m.gamma_fast > 0), m.gamma_fast, m.gamma)
            aux = {"energy_real": jnp.mean(e_pos), "energy_negative": jnp.mean(e_neg), "gamma": gamma}
            return add_energy_regulariser(contrastive_loss(e_pos, e_neg, gamma), aux, self.energy_reg, e_pos, e_neg)

        (e_loss, aux), e_grads = jax.value_and_grad(loss_fn, has_aux=True)(params["energy"])
        e_updates, e_opt = self.tx_energy.update(e_grads, opt["energy"], params["energy"])
        new_state = {"params": {"energy": optax.apply_updates(params["energy"], e_updates),
                                "generator": optax.apply_updates(params["generator"], g_updates)},
                     "opt_state": {"energy": e_opt, "generator": g_opt}, **self.gen.state_entries(new_stats)}
        metrics = {**aux, "energy_loss": e_loss, "generator_loss": g_loss,
                   "cd_negatives": use_cd.astype(jnp.float32),
                   "phi_norm": jnp.mean(jnp.sqrt(jnp.sum(phi.reshape(phi.shape[0], -1) ** 2, axis=1)))}
        return new_state, metrics


METHOD_CLASSES = {"steincd": SteinCD, "cd": SteinCD, "steingan": SteinGAN}
