"""Exact-gradient searches over (theta, beta) for the GLMM deviance, one route per model shape."""
