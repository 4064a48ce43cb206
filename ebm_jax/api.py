"""Python API: restore a checkpoint and sample, score or evaluate (also --mode=eval and --mode=sample).

    model = ebm_jax.load("runs/meg")                 # latest checkpoint and its config
    model = ebm_jax.load("runs/meg", seed=2)         # replica 2 of a run with train.num_seeds >= 3
    e = model.energy(x)                              # (B,) energies
    x = model.sample(key, 64)                        # generator samples
    x = model.sample(key, 64, mcmc_steps=100, step_size=0.01, space="latent")
    s = model.anomaly_score(x, kind="energy")        # or "score_norm"
    ll = model.log_likelihood(x)                     # exact log p(x), RBM energies only
    x = model.interpolate(key, rows=8, steps=10)     # G(z) along latent lines (Kim & Bengio Fig. 3)
    mu, log_var = model.encode(x)                    # q(z|x), divergence triangle only
    x_rec = model.reconstruct(x)                     # g(mu(x)), divergence triangle only
"""
import io
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from ebm_jax import checkpointing, kernels
from ebm_jax.data import get_dataset
from ebm_jax.evaluation import model_eval, toy2d
from ebm_jax.methods import get_method
from ebm_jax.methods.base import ConfigError
from ebm_jax.state import init_full_state, num_seeds, seed_replica


def _traced_with_config_kernels(fn):
    """Model methods trace (on first use) with the checkpoint's model.kernels choice."""
    import functools

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        with kernels.use(kernels.of(self.config)):
            return fn(self, *args, **kwargs)
    return wrapper


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
        want = f"(B, {', '.join(map(str, self.method.data_shape))}) with B >= 1"
        if x.shape[1:] != tuple(self.method.data_shape):
            raise ValueError(f"x has shape {tuple(x.shape)}; this model expects {want}.")
        if x.shape[0] == 0:
            raise ValueError(f"x has no rows (shape {tuple(x.shape)}); this model expects {want}.")
        return x

    @_traced_with_config_kernels
    def energy(self, x):
        """(B,) energies E(x); lower is more likely."""
        return self._energy(self.params, self._check_x(x))

    @_traced_with_config_kernels
    def generate(self, z):
        """G(z) for latent vectors z of shape (B, latent_dim)."""
        return self._generate(self.params, jnp.asarray(z, jnp.float32))

    @_traced_with_config_kernels
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
        n = _whole("n", n, 1)
        mcmc_steps = _whole("mcmc_steps", mcmc_steps, 0)
        step_size = _positive("step_size", s.step_size if step_size is None else step_size)
        temperature = _positive("temperature", s.temperature if temperature is None else temperature)
        space = s.space if space is None else space
        from ebm_jax.methods.base import SPACES
        if space not in SPACES:
            raise ValueError(f"space={space!r} is invalid; valid spaces are {list(SPACES)}.")
        x, rate = self._sample(
            self.params, key, n, mcmc_steps, step_size, space=space, temperature=temperature,
            include_prior=bool(s.include_prior if include_prior is None else include_prior))
        return (x, rate) if return_acceptance else x

    @_traced_with_config_kernels
    def interpolate(self, key, rows: int = 8, steps: int = 10):
        """G(z) along straight lines in latent space between pairs of prior draws (Kim & Bengio's
        Figure 3): (rows * steps, ...) samples, row r going from G(z_r) to G(z'_r)."""
        if not self.method.has_generator:
            raise ValueError(f"{self.method.name} has no generator to interpolate.")
        rows, steps = _whole("rows", rows, 1), _whole("steps", steps, 1)
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

    @_traced_with_config_kernels
    def encode(self, x):
        """(mu, log_var) of the inference model q(z|x) = N(mu, diag exp(log_var)), each (B, latent_dim)."""
        return self._method_fn("encode")(self.params, self._check_x(x))

    @_traced_with_config_kernels
    def reconstruct(self, x):
        """g(mu(x)): the generator at the inferred latent mean, same shape as x."""
        return self._method_fn("reconstruct")(self.params, self._check_x(x))

    @_traced_with_config_kernels
    def log_likelihood(self, x):
        """(B,) exact log p(x) = -E(x) - log Z, for energies with an exact partition function (the RBM)."""
        log_z = self.method.log_partition(self.params)
        if log_z is None:
            raise ValueError(f"{self.method.name}'s energy ({self.config.model.energy.get('kind', 'mlp')}) has no exact "
                             "partition function; only model.energy.kind='rbm' has one.")
        return -self.energy(x) - log_z

    @_traced_with_config_kernels
    def anomaly_score(self, x, kind: str = "energy"):
        """(B,) scores, higher = more anomalous: 'energy' (E(x)) or 'score_norm' (||grad_x E(x)||)."""
        return self._anomaly(self.params, self._check_x(x), kind=kind)


def _whole(name: str, value, minimum: int) -> int:
    """value as an int if it is a whole number >= minimum, else one ValueError sentence (2.7 is not 2)."""
    ok = (isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer())) \
        and not isinstance(value, bool) and value >= minimum
    if not ok:
        raise ValueError(f"{name}={value!r} is invalid; it must be a whole number >= {minimum}.")
    return int(value)


def _positive(name: str, value) -> float:
    """value as a float if it is finite and > 0, else one ValueError sentence."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(value, bool) or not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name}={value!r} is invalid; it must be a finite number > 0.")
    return v


# Config fields that name code to import: a checkpoint can come from someone else, so its values are
# never imported; the user names the code (--config, or config_overrides in Python) to have it run.
CODE_FIELDS = ("eval.inception_fn",)


def distrust_code(config, workdir) -> None:
    """Blanks the CODE_FIELDS of a config read from a checkpoint, saying so where one was set."""
    import warnings
    for path in CODE_FIELDS:
        section, field = path.split(".")
        value = config[section].get(field, "") if section in config else ""
        if value:
            config[section][field] = ""
            warnings.warn(f"the checkpoint in {workdir} names {path}={value!r}; code named in a checkpoint is not "
                          f"imported, so the metrics it computes are skipped: pass --config with {path} (or "
                          "config_overrides in Python) to run it.", stacklevel=3)


def restore(workdir: str, step: Optional[int] = None, config_overrides=None):
    """(method, state, config, step) of the checkpoint of `step` (default: the latest) in `workdir`, the
    state with its leading seed axis when the run trained train.num_seeds > 1 replicas; see `load`."""
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
        else:
            distrust_code(config, workdir)
        meta = saved["meta"]
        try:
            method = get_method(config, tuple(meta["data_shape"]))
        except ConfigError as e:
            raise checkpointing.CheckpointError(f"{workdir}: the saved config cannot build its method ({e})") from e

        replicas = num_seeds(config)
        init = lambda k: init_full_state(method, k)  # noqa: E731
        if replicas > 1:
            shapes = jax.eval_shape(jax.vmap(init), jnp.stack([jax.random.PRNGKey(0)] * replicas))
        else:
            shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
        checkpointing.check_meta(meta, checkpointing.make_meta(method, shapes), workdir)
        # this process's first device: in a multi-process run jax.devices()[0] may belong to another process
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), shapes)
        state = checkpointing.restore_state(manager, step, abstract, meta.get("checksums"))
    finally:
        manager.close()
    return method, state, config, int(step)


def load(workdir: str, step: Optional[int] = None, config_overrides=None, seed: int = 0) -> Model:
    """Restores the checkpoint of `step` (default: the latest) in `workdir` with the config saved there.

    config_overrides: an optional ConfigDict whose `eval` and `sampling` sections replace the saved
    ones (the method, model and data sections always come from the checkpoint).
    seed: which replica of a run with train.num_seeds = S > 1 to load, 0 .. S - 1 (replica i is the run
    of train.seed + i); runs of one seed have only replica 0.
    """
    method, state, config, step = restore(workdir, step, config_overrides)
    replicas = num_seeds(config)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < replicas:
        raise ValueError(f"seed={seed!r} is not a replica of {checkpointing.absolute(workdir)}, which holds "
                         f"{replicas} (train.num_seeds); give an integer in [0, {replicas}).")
    if replicas > 1:
        state = seed_replica(state, seed)
    return Model(method, method.inference_params(state), config, step, checkpointing.absolute(workdir))


def evaluate_checkpoint(workdir: str, config=None, step: Optional[int] = None):
    """--mode=eval: the metrics of a checkpoint (every replica of a multi-seed run, with their means and
    stds), written to workdir/eval/metrics_stepN.json, a picture and TensorBoard scalars. Returns
    (step, metrics)."""
    method, state, cfg, step = restore(workdir, step=step, config_overrides=config)
    dataset = get_dataset(cfg.data)
    with kernels.use(kernels.of(cfg)):
        metrics, png = model_eval.evaluate_replicas(method, method.inference_params(state), dataset, cfg, step,
                                                    num_seeds(cfg))
    if jax.process_index() != 0:  # a multi-process eval: every process computed the same metrics
        return step, metrics
    out = os.path.join(checkpointing.absolute(workdir), "eval")
    checkpointing.makedirs(out)
    model_eval.write_json_atomic(os.path.join(out, f"metrics_step{step}.json"), {"step": step, **metrics})
    if png is not None:
        toy2d.write_atomic(os.path.join(out, f"{'density' if dataset.is_2d else 'samples'}_step{step}.png"), png)
    writer = model_eval.make_writer(checkpointing.absolute(workdir))
    if writer is not None:
        model_eval.write_eval_scalars(writer, metrics, step)
        writer.close()
    return step, metrics


def sample_checkpoint(workdir: str, config=None, step: Optional[int] = None):
    """--mode=sample: config.sampling.num_samples samples of a checkpoint, drawn as config.sampling says
    (mcmc_steps MALA steps in `space` from generator samples, or from N(0, I) for methods without a
    generator; plain generator samples when mcmc_steps is 0), written to workdir/samples/ as .npz (x,
    acceptance_rate, step, mcmc_steps) and, for 2-D data, a picture titled with what was done."""
    model = load(workdir, step=step, config_overrides=config)
    s = model.config.sampling
    key = jax.random.fold_in(jax.random.PRNGKey(int(model.config.train.seed) + 2), model.step)
    steps = int(s.mcmc_steps)
    x, rate = model.sample(key, int(s.num_samples), mcmc_steps=steps, return_acceptance=True)
    x = np.asarray(x)
    out = os.path.join(checkpointing.absolute(workdir), "samples")
    base = os.path.join(out, f"samples_step{model.step}")
    if jax.process_index() != 0:  # a multi-process run: process 0 writes the (identical) samples
        return base + ".npz"
    checkpointing.makedirs(out)
    buf = io.BytesIO()
    np.savez(buf, x=x, acceptance_rate=np.asarray(rate), step=np.asarray(model.step), mcmc_steps=np.asarray(steps))
    toy2d.write_atomic(base + ".npz", buf.getvalue())
    if x.ndim == 2 and x.shape[1] == 2:
        extent = get_dataset(model.config.data).extent if not model.config.data.path else None
        toy2d.write_atomic(base + ".png", toy2d.plot_samples_2d(x, extent, sampling_title(model, len(x), steps, rate)))
    return base + ".npz"


def sampling_title(model, n: int, steps: int, rate) -> str:
    """What --mode=sample did, in words, on two lines."""
    name = model.method.name
    if steps == 0:
        return f"{name} (step {model.step})\n{n} generator samples"
    start = "generator samples" if model.method.has_generator else "N(0, I)"
    space = model.config.sampling.space if model.method.has_generator else "data"
    t = float(model.config.sampling.temperature)
    return (f"{name} (step {model.step}): {n} samples\n{steps} MALA steps in {space} space from {start} "
            + (f"at T = {t:.3g} " if t != 1.0 else "") + f"(acceptance {float(rate):.2f})")
