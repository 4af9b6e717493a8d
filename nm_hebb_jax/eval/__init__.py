"""Evaluation on the host: Top-1, kNN Top-1, NMI, filter-level analyses, pictures.

docs/method.md, section "Metrics". Everything takes numpy (or jax) arrays and runs in numpy and
scikit-learn.
"""

from nm_hebb_jax.eval.filters import (
    ClassMeanAccumulator,
    class_means,
    class_selectivity,
    filter_metrics,
    filter_redundancy,
)
from nm_hebb_jax.eval.metrics import knn_top1, nmi_score, sample_memory_bank, top1_accuracy
from nm_hebb_jax.eval.plots import plot_embedding_tsne, plot_filter_grid, plot_training_curves

__all__ = [
    "ClassMeanAccumulator",
    "class_means",
    "class_selectivity",
    "filter_metrics",
    "filter_redundancy",
    "knn_top1",
    "nmi_score",
    "plot_embedding_tsne",
    "plot_filter_grid",
    "plot_training_curves",
    "sample_memory_bank",
    "top1_accuracy",
]
