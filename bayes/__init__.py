"""Bayesian mixture predictors (posterior predictive from samples and in closed form)."""
