"""Model-agnostic estimators shared by the methods (MCMC, mutual information, penalties, Jacobian
singular values and log-determinants, SVGD)."""
from ebm_jax.estimators.mcmc import langevin_chain, latent_log_prob, mala_chain, mala_log_proposal, mala_step
from ebm_jax.estimators.mutual_information import jsd_mutual_information, shuffle_per_dimension
from ebm_jax.estimators.penalties import (energy_and_gradient_penalty, energy_magnitude_penalty, input_gradients,
                                         zero_centered_gradient_penalty)
from ebm_jax.estimators.stein import median_bandwidth, stein_score_matching, svgd_direction, svgd_step
from ebm_jax.estimators.singular_values import (anisotropy_index, hutchinson_squared_norm, log_det_jacobian,
                                                smallest_singular_value, smallest_singular_value_batch)

__all__ = [
    "mala_chain", "mala_step", "mala_log_proposal", "langevin_chain", "latent_log_prob",
    "jsd_mutual_information", "shuffle_per_dimension",
    "input_gradients", "zero_centered_gradient_penalty", "energy_and_gradient_penalty", "energy_magnitude_penalty",
    "smallest_singular_value", "smallest_singular_value_batch", "log_det_jacobian", "hutchinson_squared_norm",
    "anisotropy_index",
    "svgd_direction", "svgd_step", "median_bandwidth", "stein_score_matching",
]
