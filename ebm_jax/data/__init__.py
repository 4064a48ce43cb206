"""Datasets: 2-D toys generated in code and user arrays from .npy/.npz files."""
from ebm_jax.data.datasets import DataError, Dataset, get_dataset
from ebm_jax.data.toys import TOY_EXTENT, TOYS, get_toy

__all__ = ["DataError", "Dataset", "get_dataset", "TOYS", "TOY_EXTENT", "get_toy"]
