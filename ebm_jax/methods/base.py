"""What every method shares: optimisers from the config, sampling and anomaly scores for an
energy paired with a generator. Method modules subclass `GeneratorEnergyMethod`."""
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import optax

from ebm_jax import estimators, parallel
from ebm_jax.errors import ConfigError, check_positive, optional_weight  # noqa: F401  (re-exported for the methods)
from ebm_jax.models import is_normalized_generator
from ebm_jax.models.precision import resolve_compute_dtype

OPTIMIZERS = ("adam", "adagrad", "sgd")
SCHEDULES = ("constant", "cosine", "linear")
SPACES = ("latent", "data")
PRIORS = ("gaussian", "uniform")
ANOMALY_KINDS = ("energy", "score_norm")


def learning_rate(optim_config, total_updates: int):
    """optim.lr, constant or decayed to 0 over `total_updates` updates of one network."""
    schedule = optim_config.get("schedule", "constant")
    lr = float(optim_config.lr)
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return optax.cosine_decay_schedule(lr, max(1, int(total_updates)))
    if schedule == "linear":
        return optax.linear_schedule(lr, 0.0, max(1, int(total_updates)))
    raise ConfigError(f"optim.schedule {schedule!r} is unknown; valid schedules are {list(SCHEDULES)}.")


def add_energy_regulariser(loss, aux, alpha: float, e_data, e_negative):
    """loss + alpha (mean E(x+)^2 + mean E(x-)^2) with the unweighted term as aux['regulariser']
    (estimators.energy_magnitude_penalty); at alpha = 0 (a Python float) nothing is added or traced."""
    if not alpha:
        return loss, aux
    reg = estimators.energy_magnitude_penalty(e_data, e_negative)
    return loss + alpha * reg, {**aux, "regulariser": reg}


def make_optimizer(optim_config, total_updates: int = 1) -> optax.GradientTransformation:
    """The optimiser of one network; `total_updates` is how often that network is updated in the run
    (n_critic * num_steps for a critic), which a decaying schedule needs."""
    name = optim_config.name
    lr = learning_rate(optim_config, total_updates)
    if name == "adam":
        tx = optax.adam(lr, b1=optim_config.b1, b2=optim_config.b2)
    elif name == "adagrad":
        tx = optax.adagrad(lr)
    elif name == "sgd":
        tx = optax.sgd(lr)
    else:
        raise ConfigError(f"optim.name {name!r} is unknown; valid optimisers are {list(OPTIMIZERS)}.")
    clip = optim_config.get("grad_clip", 0.0)
    if clip:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    return _split_over_devices(tx)


def _split_over_devices(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """tx with its state split over the devices (parallel.state_shardings) and its gradients and updates
    whole on each: every device computes the update of its slice from the all-reduced gradient, and
    the slices are all-gathered. Without the constraints on the gradients XLA propagated the state's
    split back into them and into the backward pass: MEG's MNIST-MLP iteration fell from 0.84 to 0.81
    efficiency at 8 devices instead of rising (0.91 with them, on the CPU path; bench/scaling.py)."""
    split = parallel.split_like_optimizer_state

    def update(grads, state, params=None):
        # whole, then each device's slice of it (a slice is free; XLA may fuse the pair into a
        # reduce-scatter): elementwise from there on, the update never touches a whole array
        updates, state = tx.update(split(parallel.replicate(grads)), state, params)
        return parallel.replicate(split(updates)), split(state)
    return optax.GradientTransformation(tx.init, update)


class Generator:
    """One calling convention over every generator network, with or without batch norm.

    Batch-normalised generators (models.is_normalized_generator: NormalizedGeneratorMLP and the DCGAN,
    ResNet and MEG-MNIST image generators) return (x, used_stats) and keep running averages in a
    'batch_stats' collection; the others return x. Methods train with `train_batch` (the batch's own
    statistics, as torch's train mode), sample with `sample` (running averages, eval mode), and take
    per-sample Jacobians through `per_sample` (one z, the batch's statistics held fixed)."""

    def __init__(self, net):
        self.net = net
        self.normalized = is_normalized_generator(net)

    def init(self, key, z):
        """(params, running averages): the averages are {} for a generator without batch norm."""
        variables = self.net.init(key, z)
        return variables["params"], variables.get("batch_stats", {})

    def state_entries(self, batch_stats) -> Dict[str, Any]:
        """The train-state entry for the running averages; none without batch norm, so that the state
        (and its checkpoints) of a plain generator stay as they were."""
        return {"batch_stats": batch_stats} if self.normalized else {}

    def train_batch(self, params, batch_stats, z, update_stats: bool = True):
        """(x, statistics used, new running averages), normalising with the batch's statistics."""
        if not self.normalized:
            return self.net.apply({"params": params}, z), [], batch_stats
        variables = {"params": params, "batch_stats": batch_stats}
        if update_stats:
            (x, stats), new = self.net.apply(variables, z, mode="batch", mutable=["batch_stats"])
            return x, stats, new.get("batch_stats", batch_stats)
        x, stats = self.net.apply(variables, z, mode="batch")
        return x, stats, batch_stats

    def sample(self, params, batch_stats, z):
        """G(z) for sampling and evaluation: batch norm with the running averages."""
        if not self.normalized:
            return self.net.apply({"params": params}, z)
        return self.net.apply({"params": params, "batch_stats": batch_stats}, z, mode="running")[0]

    def given_batch(self, params, batch_stats, stats):
        """z (B, latent) -> G(z) normalising with `stats` from a train_batch call: the per-sample map of
        every row at once (rows are independent), e.g. for a Jacobian by one batched jvp."""
        if not self.normalized:
            return lambda zz: self.net.apply({"params": params}, zz)
        variables = {"params": params, "batch_stats": batch_stats}
        return lambda zz: self.net.apply(variables, zz, mode="given", stats=stats)[0]

    def per_sample(self, params, batch_stats, stats):
        """z (latent,) -> G(z) of one sample, normalising with `stats` from a train_batch call."""
        if not self.normalized:
            return lambda zz: self.net.apply({"params": params}, zz[None])[0]
        variables = {"params": params, "batch_stats": batch_stats}
        return lambda zz: self.net.apply(variables, zz[None], mode="given", stats=stats)[0][0]


class GeneratorEnergyMethod:
    """An energy E(x) trained together with a generator G(z), z ~ N(0, I).

    Subclasses define `init`, `train_step`, `energy(params, x)` and `generate(params, z)`; this class
    gives them prior sampling, generator / MCMC sampling and anomaly scores.
    """
    name = "base"

    def __init__(self, config, data_shape: Tuple[int, ...]):
        self.config = config
        self.data_shape = tuple(data_shape)
        self.latent_shape = (int(config.model.latent_dim),)
        # what the image networks compute in (model.compute_dtype; models.precision): bfloat16 on GPU /
        # TPU by default, float32 on CPU; parameters and optimiser state are float32 either way
        self.compute_dtype = resolve_compute_dtype(config.model)

    # ---- to be provided by a method ----
    has_generator = True    # False: an energy alone (SteinCD, CD-k); sampling is data-space MCMC
    batches_per_step = 1
    progress_metrics = ("energy_loss", "generator_loss")  # shown in the progress bar

    def init(self, key, example_batch) -> Dict[str, Any]:
        raise NotImplementedError

    def train_step(self, state, batch, key):
        raise NotImplementedError

    def energy(self, params, x):
        raise NotImplementedError

    # ---- shared ----
    def log_partition(self, params):
        """Exact log Z where the energy model has one (e.g. an RBM), else None."""
        return None

    def extra_metrics(self, params, dataset, config) -> Dict[str, float]:
        """Method-specific evaluation metrics (e.g. the divergence triangle's reconstruction RMSE)."""
        return {}

    def inference_params(self, state):
        """What energy / generate / sample take: the parameters, plus the generator's batch-norm
        running averages as params['generator_stats'] where the state keeps them."""
        if "batch_stats" in state:
            return {**state["params"], "generator_stats": state["batch_stats"]}
        return state["params"]

    def generate(self, params, z):
        """G(z) for sampling (batch norm with the running averages); methods keep their Generator in
        self.gen."""
        return self.gen.sample(params["generator"], params.get("generator_stats", {}), z)

    def prior(self, key, n: int):
        """z ~ N(0, I), or U(-1, 1)^d with model.prior='uniform' (Kim & Bengio Sec. 3.2)."""
        if self.config.model.get("prior", "gaussian") == "uniform":
            return jax.random.uniform(key, (n,) + self.latent_shape, minval=-1.0, maxval=1.0)
        return jax.random.normal(key, (n,) + self.latent_shape)

    def log_prior(self, z):
        """log p(z) up to a constant, per row: -||z||^2/2, or 0 inside [-1, 1]^d and -inf outside."""
        flat = z.reshape(z.shape[0], -1)
        if self.config.model.get("prior", "gaussian") == "uniform":
            return jnp.where(jnp.all(jnp.abs(flat) <= 1.0, axis=1), 0.0, -jnp.inf)
        return -0.5 * jnp.sum(flat ** 2, axis=1)

    def sample(self, params, key, n: int, mcmc_steps: int = 0, step_size: float = 0.01,
               space: str = "latent", temperature: float = 1.0, include_prior: bool = True):
        """Generator samples, optionally refined by MALA in latent or data space.

        Returns (samples, acceptance rate); the rate is 1 when mcmc_steps == 0.
        """
        if space not in SPACES:
            raise ConfigError(f"sampling space {space!r} is unknown; valid spaces are {list(SPACES)}.")
        k_z, k_mcmc = jax.random.split(key)
        z = self.prior(k_z, n)
        energy_fn = lambda x: self.energy(params, x)
        if mcmc_steps == 0:
            return self.generate(params, z), jnp.asarray(1.0)
        if space == "latent":
            log_prob = estimators.latent_log_prob(energy_fn, lambda v: self.generate(params, v),
                                                  temperature, include_prior, self.log_prior)
            z, rate = estimators.mala_chain(log_prob, z, k_mcmc, mcmc_steps, step_size)
            return self.generate(params, z), rate
        log_prob = lambda x: -energy_fn(x) / temperature
        return estimators.mala_chain(log_prob, self.generate(params, z), k_mcmc, mcmc_steps, step_size)

    def anomaly_score(self, params, x, kind: str = "energy"):
        """Higher = more anomalous: the energy, or the norm of its input gradient (the score)."""
        if kind == "energy":
            return self.energy(params, x)
        if kind == "score_norm":
            g = estimators.input_gradients(lambda v: self.energy(params, v), x)
            return jnp.sqrt(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1))
        raise ConfigError(f"anomaly score kind {kind!r} is unknown; valid kinds are {list(ANOMALY_KINDS)}.")


class EnergyOnlyMethod(GeneratorEnergyMethod):
    """An energy trained without a generator (SteinCD, CD-k, exact maximum likelihood, PCD): sampling
    is data-space MALA from N(0, I) targeting exp(-E(x) / T)."""
    has_generator = False

    def generate(self, params, z):
        raise ConfigError(f"{self.name} trains an energy without a generator; draw samples with "
                          "model.sample(key, n, mcmc_steps=...) (data-space MALA).")

    def sample(self, params, key, n: int, mcmc_steps: int = 0, step_size: float = 0.01,
               space: str = "latent", temperature: float = 1.0, include_prior: bool = True):
        """Data-space MALA from N(0, I) targeting exp(-E(x) / T); `space` is ignored (there is no latent
        space, both values mean data space here)."""
        if mcmc_steps < 1:
            raise ConfigError(f"{self.name} has no generator; sampling needs mcmc_steps >= 1 (data-space MALA), "
                              f"got {mcmc_steps}.")
        k0, k1 = jax.random.split(key)
        x0 = jax.random.normal(k0, (n,) + self.data_shape)
        return estimators.mala_chain(lambda x: -self.energy(params, x) / temperature, x0, k1, mcmc_steps, step_size)

