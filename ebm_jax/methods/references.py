"""Two reference points for the amortized methods, on the same loop, checkpoints, API and evaluation.

  mle  maximum likelihood for 2-D data: the loss is mean E(x) + log Z, the negative log-likelihood,
       with log Z computed inside the loss, either exactly as the logsumexp of -E over the cells of a
       grid (plus log cell area: the normaliser evaluation reports with) or from an unbiased
       importance-sampled estimate of Z (configs/mle.py's default). What any EBM method can reach
       with that energy network: the ceiling of the density benchmark.
  pcd  persistent contrastive divergence with short-run Langevin dynamics from a replay buffer (Du &
       Mordatch 2019, "Implicit generation and generalization in energy-based models"), the MCMC-trained
       EBM the amortized methods are compared with in the literature. The buffer is part of the train
       state, so a resumed run continues exactly.

Neither has a generator: sampling is data-space MALA from N(0, I) (config.sampling).
"""
import math
from typing import Any, Dict

import jax
import jax.numpy as jnp
import optax

from ebm_jax import estimators, parallel
from ebm_jax.data.toys import TOY_EXTENT
from ebm_jax.evaluation.toy2d import grid_points
from ebm_jax.methods.base import ConfigError, EnergyOnlyMethod, check_positive, make_optimizer
from ebm_jax.models import build_energy


NORMALISERS = ("grid", "importance")


class ExactLikelihood(EnergyOnlyMethod):
    """Loss = mean_x E(x) + log Z, with Z from (method.normaliser):

      'grid'        logsumexp_g(-E(g)) + log(cell area) over the cell centres g of the grid [-R, R]^2 with
                    method.grid_size points per side (R = method.grid_extent, 0 = twice the toys' square,
                    the evaluation's default metric grid); method.grid_points_per_step = M > 0 uses a
                    random M of the cells each step (Z estimated without bias by N/M times their sum);
                    method.grid_shift = True moves every point by one offset drawn uniformly in a cell
                    each step (a randomly shifted lattice rule: each point is uniform in its own cell,
                    so Z = integral of exp(-E) over the square is estimated without bias, and an energy
                    cannot hide mass between fixed points, so a grid coarser than evaluation's can
                    stand in for it: configs/mle.py's 'grid' variant, 200 points a side, 1/9 of the energies);
      'importance'  Z = E_q[exp(-E(y)) / q(y)] with method.importance_samples draws y of the proposal
                    q = u Uniform([-R, R]^2) + (1 - u) (kernel density of the batch, bandwidth h), u =
                    method.uniform_fraction, h = method.kde_bandwidth: unbiased for Z with a small variance
                    where q is close to the model, at a fraction of a grid's cost per step.

    The log of an unbiased estimate of Z is biased by O(1/M); evaluation normalises on its own grid, so
    its metrics are exact either way."""
    name = "mle"
    progress_metrics = ("nll", "log_partition", "energy_real")

    def __init__(self, config, data_shape):
        super().__init__(config, data_shape)
        if self.data_shape != (2,):
            raise ConfigError(f"method 'mle' normalises exp(-E) on a grid of 2-D points; the data have shape "
                              f"{self.data_shape}, so use 2-D data (a toy, or data.path of shape (N, 2)).")
        m = config.method
        self.normaliser = m.get("normaliser", "grid")
        if self.normaliser not in NORMALISERS:
            raise ConfigError(f"method.normaliser={self.normaliser!r} is unknown; valid normalisers are {list(NORMALISERS)}.")
        check_positive(config, "method.grid_size", integer=True)
        check_positive(config, "method.grid_extent", allow_zero=True)
        check_positive(config, "method.grid_points_per_step", integer=True, allow_zero=True)
        if self.normaliser == "importance":
            check_positive(config, "method.importance_samples", integer=True)
            check_positive(config, "method.kde_bandwidth")
            check_positive(config, "method.uniform_fraction")
            if m.uniform_fraction > 1:
                raise ConfigError(f"method.uniform_fraction={m.uniform_fraction} is invalid; it is a fraction in (0, 1].")
        extent = float(m.grid_extent)
        if extent == 0.0:
            if config.data.get("path", ""):
                raise ConfigError("method.grid_extent=0 means twice the toys' square [-2, 2]^2; for data.path data "
                                  "give the half-width of a square that holds the model's mass, e.g. "
                                  "--config.method.grid_extent=5.")
            extent = 2.0 * TOY_EXTENT
        self.extent = extent
        _, pts, area = grid_points(extent, int(m.grid_size))
        self.grid = jnp.asarray(pts)
        self.log_area = math.log(area)
        self.points_per_step = int(m.grid_points_per_step)
        self.grid_shift = bool(m.get("grid_shift", False))
        self.grid_cell = math.sqrt(area)   # the cell's side, the range of the random offset
        self.energy_net = build_energy(config.model.energy, self.data_shape, self.compute_dtype)
        self.tx = make_optimizer(config.optim, int(config.train.num_steps))

    def init(self, key, example_batch) -> Dict[str, Any]:
        params = {"energy": self.energy_net.init(key, jnp.zeros((2,) + self.data_shape, jnp.float32))["params"]}
        return {"params": params, "opt_state": {"energy": self.tx.init(params["energy"])}}

    def energy(self, params, x):
        return self.energy_net.apply({"params": params["energy"]}, x)

    def grid_log_partition(self, e_params, key=None):
        """log Z on the grid (all cells, or a random method.grid_points_per_step of them with `key`; with
        method.grid_shift and `key`, the grid moved by one offset uniform in (-cell/2, cell/2)^2)."""
        grid, log_scale = self.grid, self.log_area
        if self.grid_shift and key is not None:
            grid = grid + self.grid_cell * (jax.random.uniform(jax.random.fold_in(key, 1), (2,)) - 0.5)
        if self.points_per_step and key is not None and self.points_per_step < grid.shape[0]:
            idx = jax.random.choice(key, grid.shape[0], (self.points_per_step,), replace=False)
            grid = grid[idx]
            log_scale = log_scale + math.log(self.grid.shape[0] / self.points_per_step)
        neg = -self.energy({"energy": e_params}, parallel.shard_rows(grid))   # the grid's cells split over devices
        return jax.scipy.special.logsumexp(neg) + log_scale

    def importance_draws(self, x, key):
        """(y, log q(y)): method.importance_samples draws of the proposal around the batch x (B, 2)."""
        m = self.config.method
        n, r, h, u = int(m.importance_samples), self.extent, float(m.kde_bandwidth), float(m.uniform_fraction)
        k_pick, k_uni, k_row, k_eps = jax.random.split(key, 4)
        uniform = jax.random.uniform(k_uni, (n, 2), minval=-r, maxval=r)
        kde = x[jax.random.randint(k_row, (n,), 0, x.shape[0])] + h * jax.random.normal(k_eps, (n, 2))
        # split over the devices before log q: its (n, B) kernel sums are per draw
        y = parallel.shard_rows(jax.lax.stop_gradient(jnp.where(jax.random.bernoulli(k_pick, u, (n, 1)), uniform, kde)))
        inside = jnp.all(jnp.abs(y) <= r, axis=1)
        log_uniform = jnp.where(inside, -2.0 * math.log(2.0 * r), -jnp.inf)
        d2 = jnp.sum((y[:, None, :] - x[None]) ** 2, axis=-1)
        log_kde = jax.scipy.special.logsumexp(-0.5 * d2 / h ** 2, axis=1) - math.log(x.shape[0]) - math.log(2 * math.pi * h * h)
        log_q = jnp.logaddexp(math.log(u) + log_uniform, math.log1p(-u) + log_kde) if u < 1 else log_uniform
        return y, jax.lax.stop_gradient(log_q)

    def train_step(self, state, batch, key):
        x = batch[0]
        if self.normaliser == "importance":
            y, log_q = self.importance_draws(x, key)

        def loss_fn(ep):
            e_real = jnp.mean(self.energy({"energy": ep}, x))
            if self.normaliser == "importance":
                log_z = jax.scipy.special.logsumexp(-self.energy({"energy": ep}, y) - log_q) - math.log(y.shape[0])
            else:
                log_z = self.grid_log_partition(ep, key)
            return e_real + log_z, {"energy_real": e_real, "log_partition": log_z}

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"]["energy"])
        updates, opt = self.tx.update(grads, state["opt_state"]["energy"], state["params"]["energy"])
        new = {"params": {"energy": optax.apply_updates(state["params"]["energy"], updates)},
               "opt_state": {"energy": opt}}
        return new, {**aux, "nll": loss, "energy_loss": loss}


class PersistentContrastiveDivergence(EnergyOnlyMethod):
    """One iteration (Du & Mordatch 2019, Algorithm 1, with their energy regulariser):
      x- : B rows of the replay buffer, each replaced with probability method.reinit_prob by uniform
           noise on [-r, r]^D (r = method.init_range), then method.langevin_steps steps of
           x <- x - a grad_x E(x) + noise_scale * sqrt(2a) eps   (a = method.step_size; noise_scale = 1
           is Langevin dynamics, Du & Mordatch decouple the two);
      loss : mean E(x+) - mean E(x-) + alpha (mean E(x+)^2 + mean E(x-)^2)  (alpha = method.energy_reg),
           x- held fixed;
      buffer: the B rows are overwritten with x-."""
    name = "pcd"
    progress_metrics = ("energy_loss", "energy_real", "energy_negative")

    def __init__(self, config, data_shape):
        super().__init__(config, data_shape)
        for path, kw in (("method.buffer_size", dict(integer=True)), ("method.langevin_steps", dict(integer=True)),
                         ("method.step_size", {}), ("method.noise_scale", dict(allow_zero=True)),
                         ("method.reinit_prob", dict(allow_zero=True)), ("method.energy_reg", dict(allow_zero=True)),
                         ("method.init_range", {})):
            check_positive(config, path, **kw)
        if config.method.reinit_prob > 1:
            raise ConfigError(f"method.reinit_prob={config.method.reinit_prob} is invalid; it is a probability in [0, 1].")
        self.energy_net = build_energy(config.model.energy, self.data_shape, self.compute_dtype)
        self.tx = make_optimizer(config.optim, int(config.train.num_steps))

    def init(self, key, example_batch) -> Dict[str, Any]:
        k_e, k_b = jax.random.split(key)
        m = self.config.method
        params = {"energy": self.energy_net.init(k_e, jnp.zeros((2,) + self.data_shape, jnp.float32))["params"]}
        r = float(m.init_range)
        buffer = jax.random.uniform(k_b, (int(m.buffer_size),) + self.data_shape, minval=-r, maxval=r)
        return {"params": params, "opt_state": {"energy": self.tx.init(params["energy"])}, "buffer": buffer}

    def energy(self, params, x):
        return self.energy_net.apply({"params": params["energy"]}, x)

    def train_step(self, state, batch, key):
        m = self.config.method
        x = batch[0]
        b = x.shape[0]
        e_params, buffer = state["params"]["energy"], state["buffer"]
        k_idx, k_mask, k_noise, k_chain = jax.random.split(key, 4)
        idx = jax.random.choice(k_idx, buffer.shape[0], (b,), replace=False)
        r = float(m.init_range)
        fresh = parallel.shard_rows(jax.random.uniform(k_noise, (b,) + self.data_shape, minval=-r, maxval=r))
        reinit = jax.random.bernoulli(k_mask, float(m.reinit_prob), (b,)).reshape((b,) + (1,) * len(self.data_shape))
        x0 = parallel.shard_rows(jnp.where(reinit, fresh, buffer[idx]))   # the chains run on each device's rows
        fixed = jax.lax.stop_gradient(e_params)
        x_neg = jax.lax.stop_gradient(estimators.langevin_chain(
            lambda u: -self.energy({"energy": fixed}, u), x0, k_chain, int(m.langevin_steps),
            float(m.step_size), float(m.noise_scale)))

        def loss_fn(ep):
            e_pos, e_neg = self.energy({"energy": ep}, x), self.energy({"energy": ep}, x_neg)
            reg = float(m.energy_reg) * estimators.energy_magnitude_penalty(e_pos, e_neg)
            loss = jnp.mean(e_pos) - jnp.mean(e_neg) + reg
            return loss, {"energy_real": jnp.mean(e_pos), "energy_negative": jnp.mean(e_neg), "regulariser": reg}

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(e_params)
        updates, opt = self.tx.update(grads, state["opt_state"]["energy"], e_params)
        new = {"params": {"energy": optax.apply_updates(e_params, updates)}, "opt_state": {"energy": opt},
               "buffer": buffer.at[idx].set(x_neg)}
        return new, {**aux, "energy_loss": loss, "reinitialised": jnp.mean(reinit.astype(jnp.float32))}
