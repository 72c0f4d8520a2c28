"""Formulas: lme4's syntax parsed to terms (``parser``), expressions evaluated
safely (``evaluate``), the model frame and design matrices for the fit and for
new data (``design``)."""
