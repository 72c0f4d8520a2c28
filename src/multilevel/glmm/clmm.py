"""``clmm``: cumulative link mixed models for ordered responses (the model of
R's ``ordinal::clmm``).

    P(Yᵢ ≤ j | b) = F(αⱼ − ηᵢ),   ηᵢ = xᵢᵀβ + zᵢᵀb,   b = Λ(θ)u,  u ~ N(0, I)

with F the latent distribution (logit, probit, cloglog, loglog, cauchit) and
thresholds α₁ < ... < α_{K−1} (flexible, equidistant or symmetric).  The
model is a GLMM whose family is :class:`multilevel.glmm.families.ordinal.Cumulative`:
the engine fits η with an intercept column and the family's free threshold
parameters ψ after θ, by the same exact-gradient searches (Laplace, and AGQ
for one scalar term) and the same two-stage fallback as every other family
(:mod:`multilevel.glmm.fit`).  Results are reported as ordinal reports them
(:mod:`multilevel.glmm.clmm_results`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from multilevel.errors import DataError, DataWarning, ModelError, warn
from multilevel.formula.design import Categorical, build_design, to_pandas
from multilevel.formula.parser import parse_formula
from multilevel.glmm.clmm_results import ClmmFit
from multilevel.glmm.families.ordinal import CDFS, THRESHOLDS, Cumulative
from multilevel.glmm.fit import MAX_NAGQ, _data_name, fit_glmm
from multilevel.glmm.pirls import PirlsError
from multilevel.glmm.stages import pirls_message
from multilevel.threads import single_threaded_blas


def response_order(frame: pd.DataFrame, label: str, levels: dict | None) -> list:
    """The order of the response's categories: ``levels[label]``, or the
    categories of an ordered pandas Categorical; DataError otherwise."""
    given = (levels or {}).get(label)
    if given is not None:
        return list(given)
    col = frame[label] if label in frame.columns else None
    dtype = getattr(col, "dtype", None)
    if isinstance(dtype, pd.CategoricalDtype) and dtype.ordered:
        return list(dtype.categories)
    what = "an unordered categorical" if isinstance(dtype, pd.CategoricalDtype) else "not ordered"
    raise DataError(
        f"the response {label!r} is {what}: a cumulative link model needs the order of its "
        f"categories. Make it an ordered pandas Categorical "
        f"(pd.Categorical(x, categories=[...], ordered=True)) or pass "
        f"levels={{{label!r}: [lowest, ..., highest]}}"
    )


def used_categories(codes: np.ndarray, labels: list[str], label: str, messages: list[str]):
    """Codes on the categories in use and their range [lo, hi): empty categories
    at either end are dropped with a warning (ordinal drops them too); an
    empty category between used ones leaves two thresholds equal, so it is
    an error.  The message is also kept in ``messages`` (the fit's summary)."""
    counts = np.bincount(codes, minlength=len(labels))
    used = np.flatnonzero(counts > 0)
    if used.size < 2:
        only = labels[used[0]] if used.size else "none"
        raise DataError(
            f"the response {label!r} has observations in fewer than two categories "
            f"(only {only!r}): there is nothing to model"
        )
    lo, hi = int(used[0]), int(used[-1])
    inner = [labels[j] for j in range(lo, hi + 1) if counts[j] == 0]
    if inner:
        raise DataError(
            f"the response {label!r} has no observations in categor"
            f"{'y' if len(inner) == 1 else 'ies'} {', '.join(map(repr, inner))} between "
            "categories that have some: the thresholds on either side cannot be told apart. "
            "Merge it with a neighbour or drop it from the levels"
        )
    if lo > 0 or hi < len(labels) - 1:
        dropped = labels[:lo] + labels[hi + 1 :]
        msg = (
            f"the response {label!r} has no observations in categor"
            f"{'y' if len(dropped) == 1 else 'ies'} {', '.join(map(repr, dropped))}: "
            "dropped (no thresholds are estimated for them)"
        )
        warn(msg, DataWarning)
        messages.append(msg)
    return codes - lo, lo, hi + 1


def fit_clmm(
    formula: str,
    data: Any,
    *,
    link: str = "logit",
    threshold: str = "flexible",
    nAGQ: int = 1,
    weights: Any = None,
    levels: dict[str, list] | None = None,
    na_action: str = "omit",
    namespace: dict | None = None,
) -> ClmmFit:
    """In-memory ``clmm`` (:func:`multilevel.api.clmm` documents it)."""
    if link not in CDFS:
        raise ModelError(f"link must be one of {', '.join(CDFS)}, not {link!r}")
    if threshold not in THRESHOLDS:
        raise ModelError(f"threshold must be one of {', '.join(THRESHOLDS)}, not {threshold!r}")
    if isinstance(nAGQ, bool) or not isinstance(nAGQ, (int, np.integer)) or nAGQ < 1:
        raise ModelError(f"nAGQ must be a whole number >= 1, not {nAGQ!r}")
    if nAGQ > MAX_NAGQ:
        raise ModelError(f"nAGQ = {nAGQ} quadrature nodes; at most {MAX_NAGQ} are allowed")
    parsed = parse_formula(formula)
    if not parsed.random:
        raise ModelError(
            f"no random-effects terms in {formula!r}; add e.g. (1 | group) — a model without "
            "random effects is a cumulative link model (clm)"
        )
    if not parsed.fixed.intercept:
        raise ModelError(
            "the thresholds take the place of the intercept in a cumulative link model: "
            "remove '0 +' or '- 1' from the formula"
        )
    if nAGQ > 1 and (len(parsed.random) > 1):
        raise ModelError(
            f"nAGQ > 1 (adaptive quadrature) needs a single scalar random-effects term; the "
            f"model has {len(parsed.random)}. Use nAGQ=1 (Laplace)"
        )
    frame = to_pandas(data)
    label = parsed.response.label if parsed.response is not None else None
    if label is None:
        raise ModelError("the formula has no response")
    order = response_order(frame, label, levels)
    design = build_design(
        parsed,
        frame,
        weights=weights,
        levels={**(levels or {}), label: order},
        na_action=na_action,
        namespace=namespace,
        numeric_response=False,
        check_nobs=False,
    )
    if nAGQ > 1 and design.random[0].q != 1:
        raise ModelError(
            f"nAGQ > 1 (adaptive quadrature) needs a single scalar random-effects term; "
            f"{design.random[0].term.text} has {design.random[0].q} columns. Use nAGQ=1 (Laplace)"
        )
    r = design.response
    codes, lo, hi = used_categories(r.codes, list(r.labels), label, design.messages)
    cats = list(r.labels)[lo:hi]
    design.response = Categorical(codes, r.values[lo:hi], cats)
    fam = Cumulative(link, threshold).with_levels(cats)
    resp = fam.response(design.response, design.weights, label)
    counts = np.bincount(codes, weights=resp.weights, minlength=len(cats))
    fam.start_from_counts(counts)
    with single_threaded_blas():
        try:
            return fit_glmm(
                design,
                fam,
                resp,
                nAGQ=int(nAGQ),
                method="laplace" if nAGQ == 1 else "agq",
                data_name=_data_name(data),
                hessian="observed",
                result=ClmmFit,
            )
        except PirlsError as exc:
            raise ModelError(pirls_message(exc)) from None
