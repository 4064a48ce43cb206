"""The divergence triangle (Han, Nijkamp, Zhou, Pang, Zhu, Wu, CVPR 2020): a VAE (generator g and
inference model q) trained jointly with a latent EBM pi(x, z) proportional to exp f(x, z), Algorithm 1.

Three joint densities of (x, z): the generator's p(z) p(x|z) with p(x|z) = N(g(z), sigma^2 I), the data's
q_data(x) q(z|x) with q(z|x) = N(mu(x), diag V(x)), and the latent EBM's exp f(x, z) / Z. One iteration
(one compiled call) draws

  synthesis samples (z, x~):  z ~ N(0, I),  x~ = g(z)         (Eq. 18, with x~ ~= g(z) as the paper does)
  inference samples (x, z~):  x from the data, z~ = mu(x) + V(x)^(1/2) e   (Eq. 18)

and then, in Algorithm 1's order, updates
  alpha (EBM, Eq. 19):   L_E = -mean f(x, z~) + mean f(x~, z),  samples held fixed
  phi (inference, Eq. 20, the gradient of Eq. 15 = KL(q||p) - KL(q||pi); the log q terms cancel):
                         L_I = mean[ f(x, z~) - log p(z~) - log p(x|z~) ]
      or with method.inference_objective='kl_sum' (Eq. 17 = KL(q||p) + KL(q||pi), "Ours(+)"):
                         L_I = mean[ 2 log q(z~|x) - log p(z~) - log p(x|z~) - f(x, z~) ]
  theta (generator, Eq. 21):  L_G = -mean log p(x|z~) - mean f(g(z), z),  z~ held fixed
with z~ re-parameterised so that Eq. 20's gradient reaches phi, and f at the updated alpha.
The library's energy is E(x, z) = -f(x, z); the energy of x alone is E(x) = -f(x, mu(x)), at the
inferred z (what anomaly scores, densities on a grid and latent MCMC use).
"""
import math
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ebm_jax import parallel
from ebm_jax.methods.base import (ConfigError, Generator, GeneratorEnergyMethod, add_energy_regulariser, check_positive,
                                  make_optimizer, optional_weight)
from ebm_jax.models import build_generator
from ebm_jax.models.latent import GaussianInference, LatentEnergy
from ebm_jax.models.precision import with_compute_dtype

INFERENCE_OBJECTIVES = ("kl_difference", "kl_sum")
LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_density(x, mean, sigma):
    """log N(x; mean, sigma^2 I) per row, summed over every non-batch dimension."""
    r = (x - mean).reshape(x.shape[0], -1)
    d = r.shape[1]
    return -0.5 * jnp.sum(r ** 2, axis=1) / sigma ** 2 - d * jnp.log(sigma) - 0.5 * d * LOG_2PI


def diagonal_gaussian_log_density(z, mean, log_var):
    """log N(z; mean, diag exp(log_var)) per row."""
    return jnp.sum(-0.5 * (z - mean) ** 2 * jnp.exp(-log_var) - 0.5 * log_var - 0.5 * LOG_2PI, axis=1)


def latent_ebm_loss(f_inference, f_synthesis):
    """Eq. 19: -mean f(x, z~) + mean f(x~, z)."""
    return -jnp.mean(f_inference) + jnp.mean(f_synthesis)


def inference_loss(f_inference, log_prior, log_likelihood, log_q, objective="kl_difference"):
    """Eq. 20 (objective 'kl_difference', Eq. 15) or the gradient form of Eq. 17 ('kl_sum'), per the
    module docstring; every argument is per inference sample (x, z~)."""
    log_p = log_prior + log_likelihood
    if objective == "kl_difference":
        # [log q - log p] - [log q - f]: the log q terms cancel
        return jnp.mean(f_inference - log_p)
    if objective == "kl_sum":
        # [log q - log p] + [log q - f]  (+ log Z, constant in phi)
        return jnp.mean(2.0 * log_q - log_p - f_inference)
    raise ConfigError(f"method.inference_objective {objective!r} is unknown; valid objectives are "
                      f"{list(INFERENCE_OBJECTIVES)}.")


class DivergenceTriangle(GeneratorEnergyMethod):
    name = "triangle"
    progress_metrics = ("energy_loss", "inference_loss", "generator_loss", "reconstruction_mse")

    def __init__(self, config, data_shape):
        super().__init__(config, data_shape)
        m, mc = config.method, config.model
        check_positive(config, "method.sigma")
        if "scale_init" in mc.energy:
            check_positive(config, "model.energy.scale_init")
        if m.inference_objective not in INFERENCE_OBJECTIVES:
            raise ConfigError(f"method.inference_objective {m.inference_objective!r} is unknown; valid objectives "
                              f"are {list(INFERENCE_OBJECTIVES)}.")
        if mc.get("prior", "gaussian") != "gaussian":
            raise ConfigError("the divergence triangle's p(z) is N(0, I) (Sec. 3.1); set model.prior='gaussian'.")
        d = self.latent_shape[0]
        self.gen = Generator(build_generator(mc.generator, self.data_shape, self.compute_dtype))
        self.inference_net = with_compute_dtype(
            GaussianInference(mc.inference.kind, tuple(mc.inference.hidden), d, mc.inference.activation,
                              self.data_shape, int(mc.inference.get("channels", 32))),
            self.compute_dtype, mc.inference.kind == "conv")
        e = mc.energy
        self.energy_net = with_compute_dtype(
            LatentEnergy(e.kind, tuple(e.encoder_hidden), int(e.features), tuple(e.hidden), e.activation,
                         self.data_shape, int(e.get("channels", 32)), bool(e.spectral_norm),
                         float(e.get("scale_init", 1.0))),
            self.compute_dtype, e.kind == "conv")
        self.sigma = float(m.sigma)
        # Du & Mordatch's alpha (mean f(x, z~)^2 + mean f(x~, z)^2) on the latent EBM's loss; not in the paper
        self.energy_reg = optional_weight(config, "method.energy_reg", 0.0)
        steps = int(config.train.num_steps)
        self.tx = {k: make_optimizer(config.optim, steps) for k in ("energy", "inference", "generator")}

    def init(self, key, example_batch) -> Dict[str, Any]:
        k_e, k_i, k_g = jax.random.split(key, 3)
        x = jnp.zeros((2,) + self.data_shape, jnp.float32)
        z = jnp.zeros((2,) + self.latent_shape, jnp.float32)
        g_params, g_stats = self.gen.init(k_g, z)
        params = {"energy": self.energy_net.init(k_e, x, z)["params"],
                  "inference": self.inference_net.init(k_i, x)["params"], "generator": g_params}
        # the spectrally normalised layers' right singular vectors, kept from one iteration to the next
        # (models.mlp.spectral_normalise: one power iteration a call instead of 20); started from the
        # stateless estimate, so that iteration 0 normalises as accurately as before
        spectral = self.energy_net.apply({"params": params["energy"]}, x, z, mutable=["spectral"])[1]
        return {"params": params, "opt_state": {k: self.tx[k].init(v) for k, v in params.items()},
                **self.gen.state_entries(g_stats), **self._spectral_entries(spectral.get("spectral", {}))}

    @staticmethod
    def _spectral_entries(spectral):
        """The train-state entry for the energy's singular vectors; none without spectral normalisation."""
        return {"energy_spectral": spectral} if spectral else {}

    def inference_params(self, state):
        params = super().inference_params(state)
        return {**params, **self._spectral_entries(state.get("energy_spectral", {}))}

    def _energy_variables(self, energy_params, spectral):
        return {"params": energy_params, **({"spectral": spectral} if spectral else {})}

    # ---- the three networks ----
    def f(self, params, x, z):
        return self.energy_net.apply(self._energy_variables(params["energy"], params.get("energy_spectral")), x, z)

    def joint_energy(self, params, x, z):
        """E(x, z) = -f(x, z)."""
        return -self.f(params, x, z)

    def encode(self, params, x):
        """(mu(x), log V(x)) of q(z|x)."""
        return self.inference_net.apply({"params": params["inference"]}, x)

    def reconstruct(self, params, x):
        """g(mu(x)): the generator's mean at the inferred z (Sec. 5.2's reconstructions)."""
        return self.generate(params, self.encode(params, x)[0])

    def energy(self, params, x):
        """E(x) = -f(x, mu(x)): the latent EBM at the inferred z."""
        return self.joint_energy(params, x, self.encode(params, x)[0])

    def extra_metrics(self, params, dataset, config):
        """Reconstruction RMSE on held-out data (Table 2's metric): per image sqrt(mean over pixels of
        (x - g(mu(x)))^2), averaged over the test set, on the data's scale ([-1, 1] for images)."""
        if "_rmse" not in self.__dict__:  # compiled once, the parameters an argument (not baked in as constants)
            self._rmse = jax.jit(lambda p, v: jnp.sqrt(jnp.mean((v - self.reconstruct(p, v)).reshape(v.shape[0], -1) ** 2,
                                                               axis=1)))
        test = dataset.test[: int(config.eval.get("num_reconstruct", 10_000))]
        rmse = np.concatenate([np.asarray(self._rmse(params, test[i:i + 1000])) for i in range(0, len(test), 1000)])
        return {"reconstruction_rmse": float(np.mean(rmse))}

    # ---- one iteration: Algorithm 1 ----
    def train_step(self, state, batch, key):
        """Algorithm 1 with one forward pass of each network at each of its inputs: q at x, g at z and
        at z~ (through jax.vjp), and the pullbacks applied to the losses' cotangents. Written with
        jax.value_and_grad per loss, g(z) and g(z~) are each run twice (once for the EBM's samples and
        once inside a loss), and XLA merges the copies on one device but not once the batch is sharded
        (32x32 at 2 devices: 111 GFLOP per device instead of 86). Steps 6 and 7 share g(z~) and its
        pullback: -mean log p(x|z~) is a term of both Eq. 20 and Eq. 21, so one backward pass of its
        cotangent gives Eq. 20's gradient through z~ and Eq. 21's gradient in theta."""
        params, opt = state["params"], state["opt_state"]
        x = batch[0]
        b = x.shape[0]
        cfg = self.config.method
        k_z, k_e = jax.random.split(key)
        z = parallel.shard_rows(self.prior(k_z, b))
        noise = parallel.shard_rows(jax.random.normal(k_e, (b,) + self.latent_shape))

        def infer(ip):
            mu, log_var = self.inference_net.apply({"params": ip}, x)
            return mu + jnp.exp(0.5 * log_var) * noise, mu, log_var   # Eq. 18, re-parameterised

        (z_inf, mu, log_var), infer_pullback = jax.vjp(infer, params["inference"])
        g_stats = state.get("batch_stats", {})

        def generate_both(gp, zt):
            # x~ = g(z) (batch statistics, updating the running averages) and the reconstruction g(z~)
            x_gen, _, new_stats = self.gen.train_batch(gp, g_stats, z, True)
            x_rec = self.gen.train_batch(gp, g_stats, zt, False)[0]
            return (x_gen, x_rec), new_stats

        (x_gen, x_rec), generator_pullback, new_stats = jax.vjp(generate_both, params["generator"], z_inf,
                                                                has_aux=True)
        z_inf_fixed, x_syn_fixed = jax.lax.stop_gradient(z_inf), jax.lax.stop_gradient(x_gen)

        # Step 5: latent EBM, Eq. 19. With spectral normalisation the first call advances the stored
        # singular vectors by one power iteration; the second uses the same vectors (XLA computes the
        # normalised kernels once), and f at the updated alpha one more iteration from the new ones.
        spectral = state.get("energy_spectral", {})

        def e_loss_fn(ep):
            # without spectral normalisation the collection stays empty
            f_inf, new = self.energy_net.apply(self._energy_variables(ep, spectral), x, z_inf_fixed,
                                               mutable=["spectral"])
            f_syn = self.energy_net.apply(self._energy_variables(ep, spectral), x_syn_fixed, z)
            loss, aux = add_energy_regulariser(
                latent_ebm_loss(f_inf, f_syn), {"energy_real": -jnp.mean(f_inf), "energy_fake": -jnp.mean(f_syn)},
                self.energy_reg, f_inf, f_syn)
            return loss, (aux, new.get("spectral", {}))

        (e_loss, (e_aux, new_spectral)), e_grads = jax.value_and_grad(e_loss_fn, has_aux=True)(params["energy"])
        new_spectral = jax.lax.stop_gradient(new_spectral)
        e_updates, e_opt = self.tx["energy"].update(e_grads, opt["energy"], params["energy"])
        e_params = optax.apply_updates(params["energy"], e_updates)
        f_new = lambda xx, zz: self.energy_net.apply(self._energy_variables(e_params, new_spectral), xx, zz)

        # Steps 6 and 7 as functions of the networks' outputs, f at the updated alpha
        def inference_part(zt, mu_, log_var_, x_rec_):
            nll = -jnp.mean(gaussian_log_density(x, x_rec_, self.sigma))          # -mean log p(x|z~)
            log_prior = -0.5 * jnp.sum(zt ** 2, axis=1) - 0.5 * zt.shape[1] * LOG_2PI
            log_q = diagonal_gaussian_log_density(zt, mu_, log_var_)
            # Eq. 20 (or 17), log p(x|z~) entering through its mean -nll
            return inference_loss(f_new(x, zt), log_prior, -nll, log_q, cfg.inference_objective), nll

        # the cotangents of Eq. 20 in (z~, mu, log V, g(z~)); its g(z~) cotangent is d nll / d g(z~), the one
        # Eq. 21's reconstruction term has too, so it serves both pullbacks below
        (i_loss, nll), (ct_zt, ct_mu, ct_log_var, ct_rec) = jax.value_and_grad(
            inference_part, argnums=(0, 1, 2, 3), has_aux=True)(z_inf, mu, log_var, x_rec)
        energy_generated, ct_gen = jax.value_and_grad(lambda xg: -jnp.mean(f_new(xg, z)))(x_gen)
        g_loss = nll + energy_generated            # Eq. 21: -mean log p(x|z~) - mean f(g(z), z)
        g_grads, zt_from_generator = generator_pullback((ct_gen, ct_rec))
        i_grads, = infer_pullback((ct_zt + zt_from_generator, ct_mu, ct_log_var))
        i_updates, i_opt = self.tx["inference"].update(i_grads, opt["inference"], params["inference"])
        g_updates, g_opt = self.tx["generator"].update(g_grads, opt["generator"], params["generator"])

        new_params = {"energy": e_params, "inference": optax.apply_updates(params["inference"], i_updates),
                      "generator": optax.apply_updates(params["generator"], g_updates)}
        metrics = {"energy_loss": e_loss, "inference_loss": i_loss, "generator_loss": g_loss, **e_aux,
                   "posterior_log_var": jnp.mean(log_var), "reconstruction_mse": jnp.mean((x - x_rec) ** 2),
                   "energy_generated": energy_generated}
        return {"params": new_params, "opt_state": {"energy": e_opt, "inference": i_opt, "generator": g_opt},
                **self.gen.state_entries(new_stats), **self._spectral_entries(new_spectral)}, metrics
