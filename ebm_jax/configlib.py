"""The config shape every method shares (sections data, model, method, optim, train, eval, sampling)."""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method = ml_collections.ConfigDict({"name": ""})

    c.data = ml_collections.ConfigDict({
        # a toy (ebm_jax/data/toys.py), mnist, fashion_mnist, cifar10, celeb_a, stacked_mnist, mnist_anomaly
        # or kdd99 (ebm_jax/data/sources.py)
        "name": "25gaussians",
        "path": "",              # .npy/.npz vectors (N, D) or images (N, H, W[, C]), or a folder of images
        # the dataset's files: MNIST-format idx files, the KDD99 file, or a TFDS data_dir prepared in
        # array_record format; nothing is downloaded
        "data_dir": "",
        "seed": 0,               # data generation, train/test split and batch order
        "num_train": 100_000,    # toys: points generated for training (the MEG reference uses 100k)
        "num_test": 10_000,      # toys: held-out points for the NLL
        "test_fraction": 0.1,    # data.path: fraction held out
        # data.path vectors (N, D): 'none', 'standardize' (zero mean, unit std per feature) or 'minmax'
        # ([-1, 1] per feature), by the training rows' statistics; images are always scaled to [-1, 1]
        "scaling": "none",
        "batch_size": 256,       # global batch, split over all devices
        "num_stacks": 3,         # stacked_mnist: 3 or 4 MNIST digits as channels (MEG Sec. 4.2)
        "anomaly_digit": 1,      # mnist_anomaly: the digit held out as the anomaly class (MEG Table 4)
        "image_size": 64,        # data.path = a folder of images: their side after a centre crop
        # kdd99 features: 'minmax' (scaled to [0, 1] by the training rows' range, what the official
        # code meant) or 'none' (raw, what it did: its scaler's output is dropped; MEG's :kdd uses this)
        "kdd_scaling": "minmax",
    })

    c.model = ml_collections.ConfigDict({
        "latent_dim": 2,
        # what the image networks (kinds dcgan, resnet, meg_mnist, conv) compute in: 'auto' = bfloat16 on
        # GPU / TPU and float32 on CPU, or 'float32' / 'bfloat16'; parameters stay float32 (models.precision)
        "compute_dtype": "auto",
        # 'auto' | 'native' | 'cpu': the CPU rewrites of convolutions, critic loops, the SVGD median and
        # explicit Jacobians on a CPU only ('auto'), never, or always (ebm_jax/kernels.py)
        "kernels": "auto",
        # kind: the network family (ebm_jax/models: build_energy, build_generator, build_statistics)
        # quadratic q > 0 adds q ||x||^2 to an MLP energy: a Gaussian base measure that keeps exp(-E)
        # integrable and its mass near the data where nothing else constrains the network
        "energy": {"kind": "mlp", "hidden": (128, 128, 128), "activation": "leaky_relu", "spectral_norm": False,
                   "quadratic": 0.0,
                   # with spectral_norm: learn the output scale as exp(s), and start it (or exp(s)) at
                   # output_scale_init, which bounds |grad E| at initialisation (models.mlp.EnergyMLP)
                   "log_output_scale": False, "output_scale_init": 1.0},
        "generator": {"kind": "mlp", "hidden": (128, 128, 128), "activation": "relu"},
        "statistics": {"kind": "mlp", "hidden": (128, 128, 128), "activation": "leaky_relu"},
    })

    c.optim = ml_collections.ConfigDict({"name": "adam", "lr": 1e-4, "b1": 0.5, "b2": 0.9, "grad_clip": 0.0,
                                      "schedule": "constant"})  # or 'cosine' / 'linear' decay to 0

    c.train = ml_collections.ConfigDict({
        "num_steps": 1000,
        "seed": 0,
        "log_every": 100,          # progress-bar losses and TensorBoard scalars
        "eval_every": 2000,        # periodic evaluation (0 = only at the end)
        "checkpoint_every": 1000,
        "max_to_keep": 3,
        "progress_bar": True,
        # iterations per compiled call (a lax.scan over their batches): the toys' tiny iterations are
        # otherwise dominated by Python dispatch (EBM-0GP's toy: 1.6 ms per iteration with 1, 1.0 ms
        # with 10); the same numbers as 1 (tested). The log, checkpoint and eval periods should be
        # multiples of it (else single steps fill the gaps). Real-data variants set 1: their iterations
        # are long, and a second, single-step program would double their compile time.
        "steps_per_call": 10,
        # independent replicas trained together in one compiled program (the iteration vmapped over a
        # leading seed axis of the state): replica i is the run of train.seed + i, all replicas see the
        # same batches; evaluation reports every metric per replica and as mean +- std
        "num_seeds": 1,
        # read and transfer the next call's batches in a background thread while the current one computes
        "prefetch": True,
    })

    c.eval = ml_collections.ConfigDict({
        "grid_size": 300,          # 2-D data: grid points per side over [-extent, extent]^2
        # 2-D data: half-width of the grid that log Z, NLL and KL are computed on, at the same cell size
        # (0 = twice the data's extent); models can put mass outside the plotted square
        "grid_extent": 0.0,
        "num_samples": 2500,       # generator / MCMC samples for mode and quality metrics
        "mode_min_count": 5,       # a mode is covered with at least this many high-quality samples
        "mcmc": True,              # also evaluate MCMC samples (config.sampling)
        # out-of-distribution check: a folder with an MNIST-format test split (t10k-images-idx3-ubyte.gz),
        # e.g. Fashion-MNIST for an MNIST model; '' = off. Reports ood_energy/* and ood_score_norm/*
        # (AUROC, AUPRC, FPR80) of telling those images from the model's own test split.
        "ood_data_dir": "",
        "num_ood": 10_000,         # examples of each set used for the OOD metrics
        # Image metrics (ebm_jax/evaluation/image_metrics.py), applied by data shape, '' = off:
        # the MNIST classifier's .npz (this project: ../shared/data/models/digit_recognizer_py_0.1.0_mnist_cnn.npz;
        # elsewhere the output of `python -m ebm_jax.evaluation.train_classifier`): classifier_fd on
        # (28, 28, 1) images, StackedMNIST modes_covered / mode_kl on (28, 28, S) images.
        "classifier_path": "",
        # 'module:function' or 'file.py:function' returning x -> (logits, pool features), e.g. an
        # Inception network: inception_score and fid on any images.
        "inception_fn": "",
        "num_metric_samples": 10_000,  # samples per kind for those metrics (generator samples are topped up)
        "fid_reference": "test",   # the split whose feature statistics the Fréchet distances compare with
    })

    c.sampling = ml_collections.ConfigDict({
        "mcmc_steps": 100,
        "step_size": 0.01,
        "space": "latent",         # 'latent' (MEG Sec. 3.2) or 'data'
        "temperature": 1.0,
        "include_prior": True,     # latent target exp(-E(G(z))/T) N(z; 0, I); False = Eq. 12 alone
        "num_samples": 1000,       # --mode=sample
    })
    return c


def parse_variant(variant: str, datasets, extras=()):
    """Splits 'swissroll,paper' into {'dataset': 'swissroll', 'extras': {'paper'}}; errors on unknowns."""
    out = {"extras": set()}
    for token in [t.strip() for t in (variant or "").split(",") if t.strip()]:
        if token in datasets:
            if "dataset" in out:
                raise ValueError(f"config variant {variant!r} names two datasets; give at most one of {list(datasets)}.")
            out["dataset"] = token
        elif token in extras:
            out["extras"].add(token)
        else:
            raise ValueError(f"config variant {token!r} is unknown; valid variants are datasets "
                             f"{list(datasets)} and options {list(extras)}, comma-separated.")
    return out


def validate(config) -> None:
    """Checks the fields every method shares; raises ConfigError naming the first bad field."""
    # Imported here: methods imports this module's siblings, not the other way around.
    from ebm_jax.methods.base import PRIORS, SPACES, ConfigError, check_positive
    for section in ("method", "data", "model", "optim", "train", "eval", "sampling"):
        if section not in config:
            raise ConfigError(f"config has no '{section}' section; every config needs method, data, model, "
                              "optim, train, eval and sampling (see ebm_jax/configlib.py).")
    if "steps_per_call" in config.train:
        check_positive(config, "train.steps_per_call", integer=True)
    if "num_seeds" in config.train:
        check_positive(config, "train.num_seeds", integer=True)
    for path in ("data.batch_size", "data.num_train", "data.num_test", "train.log_every",
                 "train.checkpoint_every", "train.max_to_keep", "eval.grid_size", "eval.num_samples",
                 "sampling.num_samples", "model.latent_dim"):
        check_positive(config, path, integer=True)
    for path in ("train.num_steps", "train.eval_every", "sampling.mcmc_steps", "eval.mode_min_count"):
        check_positive(config, path, integer=True, allow_zero=True)
    for path in ("optim.lr", "sampling.step_size", "sampling.temperature"):
        check_positive(config, path)
    if "grid_extent" in config.eval:
        check_positive(config, "eval.grid_extent", allow_zero=True)
    _check_optimizer(config, ConfigError)
    _check_widths(config, ConfigError)
    if config.model.get("prior", "gaussian") not in PRIORS:
        raise ConfigError(f"config.model.prior={config.model.prior!r} is invalid; valid priors are {list(PRIORS)}.")
    _check_compute_dtype(config, ConfigError)
    from ebm_jax.kernels import KERNELS
    if config.model.get("kernels", "auto") not in KERNELS:
        raise ConfigError(f"config.model.kernels={config.model.kernels!r} is invalid; valid values are {list(KERNELS)}.")
    if config.sampling.space not in SPACES:
        raise ConfigError(f"config.sampling.space={config.sampling.space!r} is invalid; valid spaces are {list(SPACES)}.")
    # image-metric fields (a missing classifier file, a bad 'module:function'): fail before training
    from ebm_jax.evaluation.image_metrics import check_eval_config
    check_eval_config(config.eval, ConfigError)
    tf = config.data.test_fraction
    if not isinstance(tf, (int, float)) or not 0.0 <= tf < 1.0:
        raise ConfigError(f"config.data.test_fraction={tf!r} is invalid; it must be in [0, 1).")


def _check_optimizer(config, error) -> None:
    """Adam's betas in [0, 1), a gradient-clipping norm >= 0 (0 = off)."""
    from ebm_jax.methods.base import check_positive
    for beta in ("b1", "b2"):
        if beta in config.optim:
            v = config.optim[beta]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise error(f"config.optim.{beta}={v!r} is invalid; Adam's decay rates must be in [0, 1).")
    if "grad_clip" in config.optim:
        check_positive(config, "optim.grad_clip", allow_zero=True)


def _check_widths(config, error) -> None:
    """Every network's hidden widths are positive integers; an MLP has at least one hidden layer."""
    for role in ("energy", "generator", "statistics", "inference"):
        net = config.model.get(role)
        if not isinstance(net, ml_collections.ConfigDict):
            continue
        for field in ("hidden", "encoder_hidden"):
            if field not in net:
                continue
            v = net[field]
            widths = tuple(v) if isinstance(v, (tuple, list)) else None
            ok = widths is not None and all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths)
            if not ok:
                raise error(f"config.model.{role}.{field}={v!r} is invalid; it must be a tuple of positive integer "
                            "widths, e.g. (128, 128).")
            if not widths and net.get("kind", "mlp") == "mlp" and field == "hidden":
                raise error(f"config.model.{role}.{field}=() is invalid: an MLP needs at least one hidden layer; give "
                            "a tuple of positive widths, e.g. (128, 128).")


def _check_compute_dtype(config, error) -> None:
    """model.compute_dtype must be valid, and 'bfloat16' must have an image network to act on."""
    from ebm_jax.models.precision import COMPUTE_DTYPES, IMAGE_KINDS
    value = config.model.get("compute_dtype", "auto")
    if value not in COMPUTE_DTYPES:
        raise error(f"config.model.compute_dtype={value!r} is invalid; valid values are {list(COMPUTE_DTYPES)}.")
    kinds = [config.model[r].get("kind", "mlp") for r in ("energy", "generator", "statistics", "inference")
             if r in config.model and isinstance(config.model[r], ml_collections.ConfigDict)]
    if value == "bfloat16" and not any(k in IMAGE_KINDS + ("conv",) for k in kinds):
        raise error(f"config.model.compute_dtype='bfloat16' acts on image networks (kinds {list(IMAGE_KINDS)}, and "
                    f"the triangle's 'conv'), and this model has none (kinds {kinds}); its MLPs compute in float32, "
                    "so use 'auto' or 'float32'.")


def load_module(path: str):
    """The config file at `path` as a module (what --config executes)."""
    import importlib.util
    import os
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist; give a path such as configs/meg.py.")
    module_spec = importlib.util.spec_from_file_location(f"_ebm_config_{abs(hash(os.path.abspath(path)))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load_sibling(config_file: str, name: str):
    """The config file `name` beside `config_file` (a config's __file__) as a module: configs that share
    one method's settings (configs/ebm_0gp.py uses configs/ebm_bb.py's make_config) load it by path, so
    they work from any working directory."""
    import os
    return load_module(os.path.join(os.path.dirname(os.path.abspath(config_file)), name))


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Python equivalent of --config=PATH[:VARIANT], e.g. load_config("configs/meg.py:swissroll")."""
    path, _, variant = str(spec).partition(":")
    return load_module(path).get_config(variant)


# The temperature of the density a toy model reports, exp(-E/T)/Z, which MCMC samples at too
# (sampling.temperature; training never reads it). One 1/T per method for all eight benchmark toys: the
# minimiser of the mean over them of KL(data || model), 3 seeds each, of the default runs' energies at 1/T =
# 0.6 to 3 by 0.1, 3.5, 4, 5 (python bench/density_benchmark.py --scan-temperatures DIRS), adopted where it
# lowers that mean by more than 0.05 nats. Mean KL at T = 1 -> at the 1/T here: SteinGAN 0.389 -> 0.242,
# PCD 0.480 -> 0.421, EBM-BB 1.585 -> 1.490, WGAN-0GP 2.780 -> 2.192, SteinCD 2.468 -> 2.328, DDGM 2.300 ->
# 2.223. Left at 1: EBM-0GP (best 1/T 1.1, -0.016), MEG (0.8, -0.024), the triangle (1.3, -0.033), CD-1
# (1.0). The energies are too flat mostly through Du & Mordatch's regulariser, which pulls them towards 0
# (docs/methods/stein.md); a ':paper' variant keeps T = 1.
TOY_INVERSE_TEMPERATURE = {"steingan": 1.6, "pcd": 1.3, "ebm_bb": 1.4, "wgan_0gp": 3.5, "steincd": 1.8, "ddgm": 1.6}


def set_toy_temperature(c: ml_collections.ConfigDict) -> None:
    """c.sampling.temperature = T of TOY_INVERSE_TEMPERATURE for c's method (unchanged for the others)."""
    if c.method.name in TOY_INVERSE_TEMPERATURE:
        c.sampling.temperature = 1.0 / TOY_INVERSE_TEMPERATURE[c.method.name]


# ---------------------------------------------------------------------------------------------
# Real-data variants shared by every method's config (:mnist, :stacked_mnist, :cifar10, :celeba, :kdd,
# :mnist_anomaly). The common ground is MEG's official settings for each dataset (its
# scripts/train/*.py: z 128, networks of width 512 / the DCGAN family, batch 64; KDD: z 32, batch 256,
# 55 epochs); each method's config file then applies its own paper's hyper-parameters on top.
# ---------------------------------------------------------------------------------------------

DATA_VARIANTS = ("mnist", "stacked_mnist", "cifar10", "celeba", "kdd", "mnist_anomaly")
SHARED_DATA = "../shared/data"   # this project's copies; users elsewhere set data.data_dir
CLASSIFIER_NPZ = SHARED_DATA + "/models/digit_recognizer_py_0.1.0_mnist_cnn.npz"

_DATA = {
    # token: (data.name, data_dir, network kind, latent, batch, iterations)
    "mnist": ("mnist", SHARED_DATA + "/mnist", "meg_mnist", 128, 64, 100_000),
    "stacked_mnist": ("stacked_mnist", SHARED_DATA + "/mnist", "meg_mnist", 128, 64, 100_000),
    "cifar10": ("cifar10", "", "dcgan", 128, 64, 100_000),
    "celeba": ("celeb_a", "", "dcgan", 128, 64, 100_000),
    # 55 epochs of the 198,643 training rows (KDD) / 49,698 training images (MNIST minus a digit)
    "kdd": ("kdd99", SHARED_DATA + "/kddcup99", "meg_kdd", 32, 256, 55 * 776),
    "mnist_anomaly": ("mnist_anomaly", SHARED_DATA + "/mnist", "meg_mnist", 128, 64, 55 * 777),
}


def apply_data_variant(c: ml_collections.ConfigDict, token: str, roles=("energy", "generator", "statistics")) -> None:
    """Points c.data at the dataset of `token` and gives the networks of `roles` that the config has
    (model.energy / generator / statistics) that dataset's presets (ebm_jax.models.network_config)."""
    from ebm_jax.models import network_config
    name, data_dir, kind, latent, batch, steps = _DATA[token]
    c.data.name = name
    c.data.data_dir = data_dir
    c.data.batch_size = batch
    if token == "stacked_mnist":
        c.data.num_stacks = 3
        c.data.num_train = 128 * 10 ** 3      # MEG's fixed table of 128 x 10^S digit tuples
    c.model.latent_dim = latent
    for role in roles:
        if role in c.model:
            c.model[role] = network_config(role, kind)
    c.train.num_steps = steps
    c.train.steps_per_call = 1
    c.train.log_every = 100
    c.train.eval_every = 0
    c.train.checkpoint_every = 5000
    c.eval.mcmc = False                       # latent MALA on image models: an explicit --mode=sample
    c.eval.num_samples = 64 if token != "kdd" else 1000
    c.sampling.num_samples = 64
    c.sampling.step_size = 1e-3
    if token in ("mnist", "stacked_mnist"):
        c.eval.classifier_path = CLASSIFIER_NPZ   # classifier_fd (MNIST), modes and KL (StackedMNIST)
    if token == "stacked_mnist":
        c.eval.num_metric_samples = 26_000        # the official code's 26 x 10^S samples
