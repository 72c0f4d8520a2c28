"""Generalized linear mixed models: families, PIRLS, the Laplace, quadrature
and Monte Carlo likelihoods, and the exact-gradient searches (``exact/``)."""
