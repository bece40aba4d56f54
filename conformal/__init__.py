"""Conformal prediction: split conformal and batch predictive inference (arXiv:2409.13990).

A leaf library: NumPy/SciPy only, nothing else of ours. See ``split`` and ``batch``.
"""
from conformal._checks import InfiniteSetWarning
from conformal.batch import (batch_quantile, mean_response_interval, rank_quantile,
                             select_with_false_claims, simultaneous_threshold)
from conformal.split import (absolute_residual_scores, aps_scores, classification_sets,
                             conformal_rank, lac_scores, regression_interval, split_quantile)
