"""Flax modules shared by every method (energies, generators, auxiliary networks)."""
from ebm_jax.models.mlp import MLP, EnergyMLP, GeneratorMLP, NormalizedGeneratorMLP, StatisticsMLP, build_mlp

__all__ = ["MLP", "EnergyMLP", "GeneratorMLP", "NormalizedGeneratorMLP", "StatisticsMLP", "build_mlp"]
