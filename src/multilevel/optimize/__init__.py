"""Optimisation of the covariance parameters: bounded search with a record and checks."""
