"""Linear mixed models: the profiled REML/ML criterion, its optimisation and the fitted model."""
