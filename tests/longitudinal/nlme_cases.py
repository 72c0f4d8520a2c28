"""Reference fits of nlme (``tests/reference/nlme``, made by
``tools/r_references/nlme_structures.R``) rebuilt as calls of ours."""

from __future__ import annotations

import json
import re

import pandas as pd

from multilevel.longitudinal import correlation as C
from multilevel.longitudinal import variance as V
from multilevel.workflow.gls import gls
from multilevel.workflow.nlme import lme

from ..conftest import REFERENCE, TESTDATA

FOLDER = REFERENCE / "nlme"
CASES = sorted(
    p.stem for p in FOLDER.glob("*.json") if p.stem not in ("bodyweight_anova", "sleep_nlme_ar1")
)


def load(case: str) -> tuple[dict, pd.DataFrame]:
    ref = json.loads((FOLDER / f"{case}.json").read_text())
    data = pd.read_csv(TESTDATA / "nlme" / ref["dataset"])
    for col, levels in ref.get("factor_levels", {}).items():
        data[col] = pd.Categorical(data[col].astype(str), categories=[str(v) for v in levels])
    return ref, data


def correlation(spec: dict | None):
    if spec is None:
        return None
    cls = getattr(C, spec["class"])
    form = None if spec.get("form_default") else spec["form"]
    kw = {"form": form}
    if spec["class"] == "corARMA":
        kw.update(p=spec["p"], q=spec["q"])
    if "nugget" in spec:
        kw["nugget"] = spec["nugget"]
    if "value" in spec:
        kw["value"] = spec["value"]
    return cls(**kw)


def weights(spec: dict | None):
    if spec is None:
        return None
    cls = getattr(V, spec["class"])
    return cls() if spec.get("form_default") else cls(form=spec["form"])


def fit(ref: dict, data: pd.DataFrame, **kw):
    args = dict(
        correlation=correlation(ref.get("correlation")),
        weights=weights(ref.get("weights")),
        method=ref["method"],
        **kw,
    )
    model = ref["fixed"]
    if ref.get("random"):
        return lme(model, ref["random"], data, **args)
    return gls(model, data, **args)


def fixef_name(name: str) -> str:
    """R's name of a coefficient, ours: identical for these cases."""
    return re.sub(r"\s+", "", name)
