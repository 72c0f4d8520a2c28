"""nlme's longitudinal models: within-group residual correlation structures
(:mod:`.correlation`), variance functions (:mod:`.variance`), the whitening
that turns a model with either into one with independent errors
(:mod:`.whiten`), the profiled likelihood over their parameters
(:mod:`.estimate`) and generalized least squares (:mod:`.gls`)."""
