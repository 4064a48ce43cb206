"""Flax modules shared by every method (energies, generators, auxiliary networks)."""
from ebm_jax.models.energies import (AutoencoderEnergy, DeconvGenerator, ProductOfExpertsEnergy, RBMEnergy, build_energy,
                                     build_generator, rbm_log_partition)
from ebm_jax.models.mlp import MLP, EnergyMLP, GeneratorMLP, NormalizedGeneratorMLP, StatisticsMLP, build_mlp

__all__ = ["MLP", "EnergyMLP", "GeneratorMLP", "NormalizedGeneratorMLP", "StatisticsMLP", "build_mlp",
           "RBMEnergy", "AutoencoderEnergy", "DeconvGenerator", "rbm_log_partition", "build_energy",
           "build_generator", "ProductOfExpertsEnergy"]
