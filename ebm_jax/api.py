"""Python API: restore a checkpoint and sample, score or evaluate.

    model = ebm_jax.load("runs/meg")                 # latest checkpoint and its config
    e = model.energy(x)                              # (B,) energies
    x = model.sample(key, 64)                        # generator samples
    x = model.sample(key, 64, mcmc_steps=100, step_size=0.01, space="latent")
    s = model.anomaly_score(x, kind="energy")        # or "score_norm"
    ll = model.log_likelihood(x)                     # exact log p(x), RBM energies only
    x = model.interpolate(key, rows=8, steps=10)     # G(z) along latent lines (Kim & Bengio Fig. 3)
    mu, log_var = model.encode(x)                    # q(z|x), divergence triangle only
    x_rec = model.reconstruct(x)                     # g(mu(x)), divergence triangle only
"""
from typing import Optional

import jax
import jax.numpy as jnp

from ebm_jax import checkpointing
from ebm_jax.methods import get_method
from ebm_jax.methods.base import ConfigError
from ebm_jax.train import init_full_state


class Model:
    """A trained method's parameters with jitted energy, sampling and anomaly scores."""

    def __init__(self, method, params, config, step: int, workdir: str):
        self.method, self.params, self.config, self.step, self.workdir = method, params, config, step, workdir
        self._energy = jax.jit(method.energy)
        self._generate = jax.jit(method.generate)
        self._sample = jax.jit(method.sample, static_argnums=(2, 3), static_argnames=("space", "include_prior"))
        self._anomaly = jax.jit(method.anomaly_score, static_argnames=("kind",))
        self._jitted = {}

    def _check_x(self, x):
        x = jnp.asarray(x, jnp.float32)
        if x.shape[1:] != tuple(self.method.data_shape):
            raise ValueError(f"x has shape {tuple(x.shape)}; this model expects (B, "
                             f"{', '.join(map(str, self.method.data_shape))}).")
        return x

    def energy(self, x):
        """(B,) energies E(x); lower is more likely."""
        return self._energy(self.params, self._check_x(x))

    def generate(self, z):
        """G(z) for latent vectors z of shape (B, latent_dim)."""
        return self._generate(self.params, jnp.asarray(z, jnp.float32))

    def sample(self, key, n: int, mcmc_steps: Optional[int] = None, step_size: Optional[float] = None,
               space: Optional[str] = None, temperature: Optional[float] = None,
               include_prior: Optional[bool] = None, return_acceptance: bool = False):
        """n samples: generator samples, refined by `mcmc_steps` MALA steps when it is > 0.

        mcmc_steps defaults to 0 (plain generator samples), or to config.sampling.mcmc_steps for a method
        without a generator (SteinCD, CD-k: data-space MALA from N(0, I)); the other MCMC settings default to the
        config's `sampling` section. space='latent' runs MALA on z targeting exp(-E(G(z))/T) N(z; 0, I);
        space='data' runs it on x targeting exp(-E(x)/T) from generator samples.
        """
        s = self.config.sampling
        if mcmc_steps is None:  # methods without a generator (SteinCD, CD-k) can only sample by MCMC
            mcmc_steps = 0 if self.method.has_generator else s.mcmc_steps
        x, rate = self._sample(
            self.params, key, int(n), int(mcmc_steps),
            float(s.step_size if step_size is None else step_size),
            space=s.space if space is None else space,
            temperature=float(s.temperature if temperature is None else temperature),
            include_prior=bool(s.include_prior if include_prior is None else include_prior))
        return (x, rate) if return_acceptance else x

    def interpolate(self, key, rows: int = 8, steps: int = 10):
        """G(z) along straight lines in latent space between pairs of prior draws (Kim & Bengio's
        Figure 3): (rows * steps, ...) samples, row r going from G(z_r) to G(z'_r)."""
        if not self.method.has_generator:
            raise ValueError(f"{self.method.name} has no generator to interpolate.")
        k0, k1 = jax.random.split(key)
        z0, z1 = self.method.prior(k0, rows), self.method.prior(k1, rows)
        t = jnp.linspace(0.0, 1.0, steps)[None, :, None]
        z = ((1.0 - t) * z0[:, None] + t * z1[:, None]).reshape((rows * steps,) + z0.shape[1:])
        return self.generate(z)

    def _method_fn(self, name):
        if not hasattr(self.method, name):
            raise ValueError(f"{self.method.name} has no inference model, so it has no {name}(); the divergence "
                             "triangle (configs/triangle.py) has one.")
        if name not in self._jitted:
            self._jitted[name] = jax.jit(getattr(self.method, name))
        return self._jitted[name]

    def encode(self, x):
        """(mu, log_var) of the inference model q(z|x) = N(mu, diag exp(log_var)), each (B, latent_dim)."""
        return self._method_fn("encode")(self.params, self._check_x(x))

    def reconstruct(self, x):
        """g(mu(x)): the generator at the inferred latent mean, same shape as x."""
        return self._method_fn("reconstruct")(self.params, self._check_x(x))

    def log_likelihood(self, x):
        """(B,) exact log p(x) = -E(x) - log Z, for energies with an exact partition function (the RBM)."""
        log_z = self.method.log_partition(self.params)
        if log_z is None:
            raise ValueError(f"{self.method.name}'s energy ({self.config.model.energy.get('kind', 'mlp')}) has no exact "
                             "partition function; only model.energy.kind='rbm' has one.")
        return -self.energy(x) - log_z

    def anomaly_score(self, x, kind: str = "energy"):
        """(B,) scores, higher = more anomalous: 'energy' (E(x)) or 'score_norm' (||grad_x E(x)||)."""
        return self._anomaly(self.params, self._check_x(x), kind=kind)


def load(workdir: str, step: Optional[int] = None, config_overrides=None) -> Model:
    """Restores the checkpoint of `step` (default: the latest) in `workdir` with the config saved there.

    config_overrides: an optional ConfigDict whose `eval` and `sampling` sections replace the saved
    ones (the method, model and data sections always come from the checkpoint).
    """
    workdir = checkpointing.absolute(workdir)
    if not checkpointing.isdir(checkpointing.checkpoint_dir(workdir)):
        raise checkpointing.CheckpointError(
            f"{workdir} holds no checkpoints (no {checkpointing.checkpoint_dir(workdir)}); train first with "
            f"python -m ebm_jax.main --config=... --workdir={workdir}.")
    manager = checkpointing.make_manager(workdir, read_only=True)
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise checkpointing.CheckpointError(f"{checkpointing.checkpoint_dir(workdir)} holds no complete checkpoint; "
                                                "train first.")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise checkpointing.CheckpointError(f"{workdir} has no checkpoint of step {step}; available steps are {steps}.")
        saved = checkpointing.restore_json(manager, step)
        config = checkpointing.config_from_json(saved["config"])
        if config_overrides is not None:
            for section in ("eval", "sampling"):
                config[section] = config_overrides[section]
        meta = saved["meta"]
        try:
            method = get_method(config, tuple(meta["data_shape"]))
        except ConfigError as e:
            raise checkpointing.CheckpointError(f"{workdir}: the saved config cannot build its method ({e})") from e

        shapes = jax.eval_shape(lambda k: init_full_state(method, k), jax.random.PRNGKey(0))
        checkpointing.check_meta(meta, checkpointing.make_meta(method, shapes), workdir)
        # this process's first device: in a multi-process run jax.devices()[0] may belong to another process
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), shapes)
        state = checkpointing.restore_state(manager, step, abstract)
    finally:
        manager.close()
    return Model(method, method.inference_params(state), config, int(step), workdir)
