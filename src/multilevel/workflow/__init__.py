"""The multilevel workflow: nlme's lme, lmList, level-wise (HLM) models and
their equations, and group-level data helpers."""
