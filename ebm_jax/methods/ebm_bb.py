"""EBM-BB and EBM-0GP (Geng et al. 2021, "Bounds all around"), and the WGAN-0GP baseline.

All three share one iteration: n_critic energy updates, then one generator update, in one compiled
call. They differ only in two switches:

                 energy (critic) loss                                   generator loss
  EBM-BB   upper bound, Eq. 15 with the hinge of Eq. 20 (p = 2)        -(lower bound), Eq. 11
  EBM-0GP  Eq. 9 + zero-centred gradient penalty on real data          -(lower bound), Eq. 11
  WGAN-0GP Eq. 9 + zero-centred gradient penalty on real data          mean E(G(z)) (no entropy)

Lower bound (Eq. 11):  E_data[E] - E_g[E] + H[p_0] + E_z[d log s_1(z)],  H[p_0] = d/2 (1 + log 2 pi)
(d log 2 for model.prior='uniform'), with s_1 the smallest singular value of J_z = dG/dz from
(method.entropy):
  'svd'      the explicit per-sample Jacobian and its exact s_1 (closed form for d <= 2, an SVD
             otherwise), as the reference toy script does with torch.svd;
  'lanczos'  Golub-Kahan-Lanczos bidiagonalisation with jvp / vjp products, method.lanczos_iters
             steps (0 = d, which is exact); never forms J;
  'lobpcg'   single-vector LOBPCG on J^T J with method.lobpcg_iters iterations (Sec. 3, Eq. 16-17);
  'exact'    0.5 log det J^T J in place of d log s_1 (the entropy itself, Eq. 8; small d).

Upper-bound penalty (Eqs. 18-20 with p = 2 and M / s_1^2 = c / d, Appendix C):
  [ (c/d) E_z || grad_x E(G(z)) J_z + grad_z log p_g(G(z)) ||^2 - zeta ]_+
with grad_z log p_g(G(z)) = grad_z log p_0(z) - grad_z (d log s_1(z))  (Eq. 8 with the entropy estimator in place of
the log-determinant, as Sec. 3 says), and the squared norm estimated by Hutchinson's estimator
(Eq. 19) with `num_probes` Gaussian probes (estimators.hutchinson_squared_norm).

Generators with batch normalisation: the per-sample map whose Jacobian is used normalises with the
batch's statistics held fixed (see models.NormalizedGeneratorMLP), as the reference code's analytic
Jacobians do. LOBPCG starts from the previous iteration's vectors, kept in the train state (the
reference draws fresh random start vectors every call).
"""
import math
from typing import Any, Dict

import jax
import jax.numpy as jnp
import optax

from ebm_jax import kernels, parallel
from ebm_jax.estimators import singular_values as sv
from ebm_jax.methods.base import (ConfigError, Generator, GeneratorEnergyMethod, add_energy_regulariser, check_positive,
                                  make_optimizer, optional_weight)
# EBM-0GP's and WGAN-0GP's critic loss is MEG's L_E: mean E(x) - mean E(G(z)) + lambda mean ||grad_x E(x)||^2
from ebm_jax.methods.meg import energy_loss as zero_gp_energy_loss
from ebm_jax.models import NormalizedGeneratorMLP, build_energy, build_generator

ENTROPY_ESTIMATORS = ("svd", "lanczos", "lobpcg", "exact")
PRECISIONS = ("default", "high", "highest")   # jax.default_matmul_precision for the Jacobian products


def hinge(a):
    return jnp.maximum(a, 0.0)


def prior_entropy(d: int, prior: str = "gaussian") -> float:
    """H[p_0]: d/2 (1 + log 2 pi) for N(0, I_d), d log 2 for U(-1, 1)^d."""
    if prior == "uniform":
        return d * math.log(2.0)
    return 0.5 * d * (1.0 + math.log(2.0 * math.pi))


def critic_loss_upper_bound(e_real, e_fake, hutchinson_sq, c, d, zeta):
    """EBM-BB energy loss, Eq. 20 without the energy-independent terms:
    mean E(x) - mean E(G(z)) + [ (c/d) mean_z ||grad_x E J + grad_z log p_g||^2 - zeta ]_+ ."""
    penalty = hinge((c / d) * jnp.mean(hutchinson_sq) - zeta)
    return jnp.mean(e_real) - jnp.mean(e_fake) + penalty, penalty


def generator_loss(e_gen, log_volume):
    """-(lower bound of Eq. 11) up to energy-of-data and H[p_0] constants:
    mean E(G(z)) - mean_z [d log s_1(z)]  (or - mean 0.5 log det J^T J with entropy='exact')."""
    return jnp.mean(e_gen) - jnp.mean(log_volume)


def batch_jacobian(fb, z):
    """(B, D, d) Jacobians of a map fb: (B, d) -> (B, ...) whose rows are independent (a generator with
    its batch-norm statistics held fixed), with D = the size of one output row: one batched pass per
    output coordinate (reverse mode) when D <= d, as on the 2-D toys, else one per latent coordinate
    (forward mode). Reverse mode there also avoids a transposed weight-gradient product that XLA:CPU
    ran at a third of its matmul rate (12% of an EBM-0GP toy iteration with forward mode)."""
    b, d = z.shape[0], z.shape[1]
    out, vjp = jax.vjp(lambda zz: fb(zz).reshape(b, -1), z)
    D = out.shape[1]
    if D <= d and kernels.cpu_rewrites():
        basis = jnp.broadcast_to(jnp.eye(D, dtype=out.dtype)[:, None, :], (D, b, D))
        return jnp.transpose(jax.vmap(lambda t: vjp(t)[0])(basis), (1, 0, 2))
    basis = jnp.broadcast_to(jnp.eye(d, dtype=z.dtype)[:, None, :], (d,) + z.shape)
    cols = jax.vmap(lambda t: jax.jvp(lambda zz: fb(zz).reshape(b, -1), (z,), (t,))[1])(basis)   # (d, b, D)
    return jnp.transpose(cols, (1, 2, 0))


class BidirectionalBounds(GeneratorEnergyMethod):
    name = "ebm_bb"
    progress_metrics = ("lower_bound", "upper_bound", "entropy", "s_min_mean", "penalty", "energy_loss")
    use_entropy = True
    use_upper_bound = True

    def __init__(self, config, data_shape):
        super().__init__(config, data_shape)
        m = config.method
        check_positive(config, "method.n_critic", integer=True)
        if self.use_entropy:
            if m.entropy not in ENTROPY_ESTIMATORS:
                raise ConfigError(f"method.entropy {m.entropy!r} is unknown; valid estimators are {list(ENTROPY_ESTIMATORS)}.")
            if m.entropy == "lobpcg":
                check_positive(config, "method.lobpcg_iters", integer=True)
            if m.entropy == "lanczos":
                check_positive(config, "method.lanczos_iters", integer=True, allow_zero=True)
            if m.get("jacobian_precision", "default") not in PRECISIONS:
                raise ConfigError(f"method.jacobian_precision={m.jacobian_precision!r} is invalid; valid values are "
                                  f"{list(PRECISIONS)}.")
        if self.use_upper_bound:
            check_positive(config, "method.bound_c")
            check_positive(config, "method.zeta", allow_zero=True)
            check_positive(config, "method.num_probes", integer=True)
        else:
            check_positive(config, "method.penalty_weight", allow_zero=True)
        check_positive(config, "method.anisotropy_samples", integer=True, allow_zero=True)
        # Du & Mordatch's alpha (mean E(x+)^2 + mean E(x-)^2) on the critic; not in the paper
        self.energy_reg = optional_weight(config, "method.energy_reg", 0.0)
        mc = config.model
        self.prior_kind = mc.get("prior", "gaussian")
        self.energy_net = build_energy(mc.energy, self.data_shape, self.compute_dtype)
        if mc.generator.get("kind", "mlp") == "mlp":
            # Tables 6-7: Linear, PReLU, BN layers
            net = NormalizedGeneratorMLP(tuple(int(h) for h in mc.generator.hidden), self.data_shape,
                                         mc.generator.activation, bool(mc.generator.get("batch_norm", True)))
        else:  # image generators (Table 8's DCGAN, Table 10's ResNet, ...)
            net = build_generator(mc.generator, self.data_shape, self.compute_dtype)
        self.gen = Generator(net)
        self.batches_per_step = int(m.n_critic)
        steps = int(config.train.num_steps)
        self.tx_energy = make_optimizer(config.optim, steps * self.batches_per_step)
        self.tx_generator = make_optimizer(config.optim, steps)

    # ---- networks ----
    def init(self, key, example_batch) -> Dict[str, Any]:
        k_e, k_g, k_v = jax.random.split(key, 3)
        x = jnp.zeros((2,) + self.data_shape, jnp.float32)
        z = jnp.zeros((2,) + self.latent_shape, jnp.float32)
        g_params, g_stats = self.gen.init(k_g, z)
        params = {"energy": self.energy_net.init(k_e, x)["params"], "generator": g_params}
        batch = int(self.config.data.batch_size)
        v0 = jax.random.normal(k_v, (batch,) + self.latent_shape)
        return {"params": params,
                "opt_state": {"energy": self.tx_energy.init(params["energy"]),
                              "generator": self.tx_generator.init(params["generator"])},
                "batch_stats": g_stats,
                # warm start of LOBPCG: one unit vector per batch row, updated every iteration
                "singular_vectors": v0 / jnp.linalg.norm(v0, axis=1, keepdims=True)}

    def energy(self, params, x):
        return self.energy_net.apply({"params": params["energy"]}, x)

    # ---- entropy pieces ----
    def _log_volume(self, fn, z, key, v0):
        """Per-sample (d log s_1(z), s_1, right singular vector) with entropy 'svd' / 'lanczos' /
        'lobpcg', or (0.5 log det J^T J, None, v0) with 'exact'; the first entry is differentiable in
        the generator's parameters and in z (s_1 = ||J v|| with v held fixed)."""
        cfg = self.config.method
        d = self.latent_shape[0]
        with self.jacobian_precision():
            if cfg.entropy == "exact":
                return sv.log_det_jacobian(fn, z), None, v0
            if cfg.entropy == "svd":
                s1, v = sv.smallest_singular_value_exact(fn, z)
            elif cfg.entropy == "lanczos":
                s1, v = sv.smallest_singular_value(fn, z, key, int(cfg.lanczos_iters) or d, v0, "lanczos")
            else:
                s1, v = sv.smallest_singular_value(fn, z, key, int(cfg.lobpcg_iters), v0, "lobpcg")
        return d * jnp.log(s1), s1, v

    def jacobian_precision(self):
        """jax.default_matmul_precision(method.jacobian_precision) for the entropy's Jacobian products.
        On TPUs (and as TF32 on A100 and newer GPUs) float32 matmuls run at reduced precision by default,
        which costs s_1 its small digits; 'highest' computes them in full float32 ('default' leaves
        JAX's setting). No effect on a CPU."""
        import contextlib
        p = self.config.method.get("jacobian_precision", "default")
        return contextlib.nullcontext() if p == "default" else jax.default_matmul_precision(p)

    def _prior_score(self, z):
        """grad_z log p_0(z): -z for N(0, I); 0 for U(-1, 1)^d (flat inside the box, where z lies)."""
        if self.prior_kind == "uniform":
            return jnp.zeros_like(z)
        return -z

    def _latent_score(self, fn, z, key, v0):
        """grad_z log p_g(G(z)) = grad_z log p_0(z) - grad_z (d log s_1(z))  (Eq. 8 with the entropy
        estimator in place of the log-determinant)."""
        return self._prior_score(z) - jax.grad(lambda zz: self._log_volume(fn, zz, key, v0)[0])(z)

    def _upper_bound_sq(self, e_params, fn, z, key, w):
        """Hutchinson estimate of ||grad_x E(G(z)) J_z + w||^2 for one z (Eq. 19), w = grad_z log p_g."""
        # u = grad_x E at x = G(z): the estimate is differentiable in the energy's parameters through u
        u = jax.grad(lambda xx: self.energy({"energy": e_params}, xx[None])[0])(fn(z))
        return sv.hutchinson_squared_norm(fn, z, u, key, int(self.config.method.num_probes), w)

    # ---- one iteration ----
    def train_step(self, state, batch, key):
        params, opt_state = state["params"], state["opt_state"]
        batch_stats, v_prev = state["batch_stats"], state["singular_vectors"]
        b = batch.shape[1]
        cfg = self.config.method
        d = self.latent_shape[0]
        k_z, k_critic, k_lob = jax.random.split(key, 3)
        g_params = params["generator"]
        # every latent batch of the iteration (n_critic critic steps, then the generator step) in one
        # draw: on a CPU each random-number call is a small loop of its own, a few percent of a toy iteration
        nc = self.batches_per_step
        z_all = parallel.shard_rows(self.prior(k_z, (nc + 1) * b).reshape((nc + 1, b) + self.latent_shape), axis=1)
        # the warm starts are per example too: each device reads the rows of its share
        v_prev = parallel.shard_rows(v_prev)

        def critic_update(carry, inputs):
            e_params, e_opt = carry
            x_real, k_ub, z = inputs
            x_fake, stats, _ = self.gen.train_batch(g_params, batch_stats, z, update_stats=False)
            x_fake = jax.lax.stop_gradient(x_fake)
            if self.use_upper_bound:
                # The generator is fixed during the critic steps: the latent score w and the sample map
                # do not depend on the energy, so they are computed once, outside its gradient.
                fn = self.gen.per_sample(g_params, batch_stats, jax.lax.stop_gradient(stats))
                k_lob, k_probe = jax.random.split(k_ub)
                w = jax.lax.stop_gradient(jax.vmap(lambda zz, kk, vv: self._latent_score(fn, zz, kk, vv))(
                    z, parallel.shard_rows(jax.random.split(k_lob, b)), v_prev))
                probe_keys = parallel.shard_rows(jax.random.split(k_probe, b))

            def loss_fn(ep):
                energy_fn = lambda v: self.energy({"energy": ep}, v)
                if not self.use_upper_bound:
                    return zero_gp_energy_loss(energy_fn, x_real, x_fake, cfg.penalty_weight, self.energy_reg)
                e_real, e_fake = energy_fn(x_real), energy_fn(x_fake)
                sq = jax.vmap(lambda zz, kk, ww: self._upper_bound_sq(ep, fn, zz, kk, ww))(z, probe_keys, w)
                loss, penalty = critic_loss_upper_bound(e_real, e_fake, sq, cfg.bound_c, d, cfg.zeta)
                return add_energy_regulariser(
                    loss, {"energy_real": jnp.mean(e_real), "energy_fake": jnp.mean(e_fake), "penalty": penalty},
                    self.energy_reg, e_real, e_fake)

            grads, aux = jax.grad(loss_fn, has_aux=True)(e_params)
            updates, e_opt = self.tx_energy.update(grads, e_opt, e_params)
            return (optax.apply_updates(e_params, updates), e_opt), aux

        keys = jax.random.split(k_critic, nc)   # the upper bound's LOBPCG starts and Hutchinson probes
        carry = (params["energy"], opt_state["energy"])
        if kernels.cpu_rewrites():
            # A Python loop, not lax.scan: inside a while loop XLA:CPU compiled MEG's StackedMNIST critic
            # steps 2.7x slower (800 vs 300 ms per iteration with 5 critic steps), and even a fully unrolled
            # scan (a one-trip loop) kept the DCGAN energy's weight-gradient convolutions in a layout XLA:CPU
            # runs ~4x slower (WGAN-0GP at 32x32 with batch 8 spent 1.2 of 1.33 s in six of them)
            for i in range(nc):
                carry, last = critic_update(carry, (batch[i], keys[i], z_all[i]))
        else:
            carry, lasts = jax.lax.scan(critic_update, carry, (batch, keys, z_all[:nc]))
            last = jax.tree_util.tree_map(lambda a: a[-1], lasts)
        e_params, e_opt = carry
        z = z_all[nc]

        def gen_loss_fn(gp):
            x, stats, new_stats = self.gen.train_batch(gp, batch_stats, z, update_stats=True)
            e_gen = self.energy({"energy": e_params}, x)
            n_aniso = min(int(cfg.anisotropy_samples), b)
            aux = {"energy_generated": jnp.mean(e_gen)}
            fn = self.gen.per_sample(gp, batch_stats, stats)
            if self.use_entropy and cfg.entropy in ("exact", "svd"):
                # one explicit Jacobian per sample serves the log-determinant or s_1, and C_z
                fb = self.gen.given_batch(gp, batch_stats, stats)
                with self.jacobian_precision():
                    if cfg.entropy == "exact":
                        jac = batch_jacobian(fb, z)                                      # (b, D, d)
                        log_vol, s1, v_new = jax.vmap(sv.log_det_from_jacobian)(jac), None, v_prev
                    else:
                        # s_1 = ||J v|| with v from the exact Jacobian, formed without gradient; the
                        # gradient is one batched jvp (rows are independent) instead of d of them
                        jac = jax.lax.stop_gradient(batch_jacobian(fb, z))
                        _, v_new = jax.vmap(sv.smallest_singular_value_from_jacobian)(jac)
                        jv = jax.jvp(lambda zz: fb(zz).reshape(b, -1), (z,), (v_new,))[1]
                        s1 = jnp.sqrt(jnp.sum(jv * jv, axis=1))
                        log_vol = d * jnp.log(s1)
                        aux["entropy_residual"] = jnp.mean(jax.vmap(sv.relative_residual_from_jacobian)(jac, v_new))
                if n_aniso:
                    aux["anisotropy"] = jnp.mean(jax.vmap(sv.anisotropy_from_jacobian)(
                        jax.lax.stop_gradient(jac[:n_aniso])))
            else:
                fn_fixed = self.gen.per_sample(jax.lax.stop_gradient(gp), batch_stats, jax.lax.stop_gradient(stats))
                if n_aniso:
                    # d jvps per sample: free on the toys, but 16 x 128 generator jvps per iteration at
                    # latent 128 (3x a whole WGAN-0GP DCGAN iteration), so the image variants turn it off
                    aux["anisotropy"] = jnp.mean(jax.vmap(lambda zz: sv.anisotropy_index(fn_fixed, zz))(z[:n_aniso]))
                if not self.use_entropy:
                    return jnp.mean(e_gen), (new_stats, v_prev, aux)
                # the iterative estimators (lanczos, lobpcg)
                log_vol, s1, v_new = jax.vmap(lambda zz, kk, vv: self._log_volume(fn, zz, kk, vv))(
                    z, parallel.shard_rows(jax.random.split(k_lob, b)), v_prev)
                # ||J^T J v - s^2 v|| / s^2 of the vector the gradient used, ~0 when s_1 is converged: one
                # jvp and one vjp (the svd path above takes it from its explicit Jacobian)
                aux["entropy_residual"] = jnp.mean(jax.vmap(lambda zz, vv: sv.relative_residual(fn_fixed, zz, vv))(
                    z, v_new))
            aux["log_volume"] = jnp.mean(log_vol)
            if s1 is not None:  # the exact log-det path has no separate s_1
                aux.update(s_min_mean=jnp.mean(s1), s_min_min=jnp.min(s1), s_min_max=jnp.max(s1))
            return generator_loss(e_gen, log_vol), (new_stats, v_new, aux)

        (g_loss, (new_stats, v_new, gen_metrics)), g_grads = jax.value_and_grad(gen_loss_fn, has_aux=True)(g_params)
        g_updates, g_opt = self.tx_generator.update(g_grads, opt_state["generator"], g_params)

        weight = 1.0 if self.use_upper_bound else cfg.penalty_weight
        metrics = {
            **last, **gen_metrics,
            "energy_loss": (last["energy_real"] - last["energy_fake"] + weight * last["penalty"]
                            + self.energy_reg * last.get("regulariser", 0.0)),
            "generator_loss": g_loss,
        }
        if self.use_entropy:
            metrics["entropy"] = prior_entropy(d, self.prior_kind) + gen_metrics["log_volume"]
            metrics["lower_bound"] = last["energy_real"] - gen_metrics["energy_generated"] + metrics["entropy"]
        if self.use_upper_bound:
            metrics["upper_bound"] = metrics["lower_bound"] + last["penalty"]
        new_state = {"params": {"energy": e_params, "generator": optax.apply_updates(g_params, g_updates)},
                     "opt_state": {"energy": e_opt, "generator": g_opt},
                     "batch_stats": new_stats, "singular_vectors": v_new}
        return new_state, metrics


class ZeroGPBounds(BidirectionalBounds):
    """EBM-0GP: EBM-BB's generator (lower bound) with the zero-centred gradient penalty as critic regulariser."""
    name = "ebm_0gp"
    use_upper_bound = False


class WGANZeroGP(BidirectionalBounds):
    """WGAN-0GP: the 0GP critic and a generator with no entropy term (the paper's baseline)."""
    name = "wgan_0gp"
    use_entropy = False
    use_upper_bound = False


METHOD_CLASSES = {"ebm_bb": BidirectionalBounds, "ebm_0gp": ZeroGPBounds, "wgan_0gp": WGANZeroGP}
