"""Flax modules shared by every method (energies, generators, auxiliary networks)."""
from ebm_jax.models.batchnorm import BN_MODES, BatchNormLayers
from ebm_jax.models.energies import (ENERGY_KINDS, GENERATOR_KINDS, NORMALIZED_GENERATOR_KINDS, STATISTICS_KINDS,
                                     AutoencoderEnergy, DeconvGenerator, ProductOfExpertsEnergy, RBMEnergy, build_energy,
                                     build_generator, build_statistics, is_normalized_generator, network_config,
                                     rbm_log_partition)
from ebm_jax.models.images import (ConvStatistics, DCGANEnergy, DCGANGenerator, MEGMNISTEnergy, MEGMNISTGenerator,
                                   ResNetEnergy, ResNetGenerator)
from ebm_jax.models.mlp import MLP, EnergyMLP, GeneratorMLP, NormalizedGeneratorMLP, StatisticsMLP, build_mlp

__all__ = ["MLP", "EnergyMLP", "GeneratorMLP", "NormalizedGeneratorMLP", "StatisticsMLP", "build_mlp",
           "RBMEnergy", "AutoencoderEnergy", "DeconvGenerator", "rbm_log_partition", "build_energy",
           "build_generator", "build_statistics", "ProductOfExpertsEnergy", "BatchNormLayers", "BN_MODES",
           "DCGANEnergy", "DCGANGenerator", "ResNetEnergy", "ResNetGenerator", "MEGMNISTEnergy",
           "MEGMNISTGenerator", "ConvStatistics", "ENERGY_KINDS", "GENERATOR_KINDS", "STATISTICS_KINDS",
           "NORMALIZED_GENERATOR_KINDS", "is_normalized_generator", "network_config"]
