"""Evaluation: density on a grid, KL, NLL, mode coverage and pictures for 2-D data; anomaly / OOD metrics;
image metrics (MNIST classifier, StackedMNIST modes, Fréchet distances, Inception score / FID)."""
from ebm_jax.evaluation import anomaly, classifier, image_metrics
from ebm_jax.evaluation.toy2d import (evaluate_2d, grid_log_density, grid_points, image_grid_png, kl_on_grid, mode_metrics,
                                      plot_2d, plot_samples_2d, png_to_array, write_atomic)

__all__ = ["anomaly", "classifier", "image_metrics", "evaluate_2d", "grid_log_density", "grid_points", "image_grid_png", "kl_on_grid", "mode_metrics", "plot_2d",
           "plot_samples_2d", "png_to_array", "write_atomic"]
