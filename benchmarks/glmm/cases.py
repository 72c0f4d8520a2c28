"""GLMM benchmark cases: data, formula per engine, family, nAGQ.

Imported by the driver and by the Python runners (also under the separate
benchmark virtualenv), so it needs only numpy and pandas.

Every engine reads the same *prepared* CSV in ``.data/`` (written once by
:func:`prepare`, before any timing): the source file plus the derived columns
some engine's formula syntax needs (``fail`` = size − incidence for ``glmm``'s
two-column ``cbind``; ``use`` recoded N/Y → 0/1).  Factor columns are then made
factors by each runner (pandas Categorical of strings / R ``factor()``) with the
level order given here, first level = reference; an *ordered* factor column
(the ordinal response) becomes an ordered Categorical / R ``factor(...,
ordered = TRUE)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHARED_DATA = Path(os.environ.get("BENCH_SHARED_DATA", "/work/shared/data"))
DATA_DIR = Path(os.environ.get("BENCH_GLMM_DATA_DIR", HERE / ".data"))


@dataclass(frozen=True)
class Dataset:
    name: str
    # a file in SHARED_DATA, "sim:NAME" for simulate.py, or "repo:PATH" for a file in
    # this repository (PATH relative to its root)
    source: str
    # factor column -> level order (None: sorted values, numbers numerically)
    factors: dict[str, list[str] | None]
    derived: str = ""  # what prepare() adds or recodes, for the README/JSON
    ordered: tuple[str, ...] = ()  # factor columns that are ordered (levels given)

    def prepared_path(self) -> Path:
        return DATA_DIR / f"{self.name}.prepared.csv"


DATASETS = {
    d.name: d
    for d in [
        Dataset(
            "cbpp",
            "cbpp.csv",
            {"period": ["1", "2", "3", "4"], "herd": None},
            "fail = size - incidence",
        ),
        Dataset(
            "contraception",
            "contraception.csv",
            {"urban": ["N", "Y"], "livch": ["0", "1", "2", "3+"], "district": None},
            "use: N -> 0, Y -> 1",
        ),
        Dataset(
            "grouseticks",
            "grouseticks.csv",
            {"YEAR": ["95", "96", "97"], "BROOD": None, "INDEX": None, "LOCATION": None},
        ),
        Dataset("binary_sim", "sim:binary_sim", {"g": None}),
        Dataset("nb_sim", "sim:nb_sim", {"g": None}),
        Dataset("gamma_sim", "sim:gamma_sim", {"g": None}),
        Dataset(
            "clmm_sim",
            "sim:clmm_sim",
            {"rating": ["1", "2", "3", "4", "5"], "rater": None},
            ordered=("rating",),
        ),
        Dataset(
            "clmm_sim_20k",
            "sim:clmm_sim_20k",
            {"rating": ["1", "2", "3", "4", "5"], "rater": None},
            ordered=("rating",),
        ),
        # real data sets added after the engine was tuned (2026-12-06), from
        # data/export_real.R
        Dataset(
            "verbagg",
            "repo:benchmarks/glmm/data/real/verbagg.csv",
            {
                "Gender": ["F", "M"],
                "btype": ["curse", "scold", "shout"],
                "situ": ["other", "self"],
                "id": None,
                "item": None,
            },
            "r2: N -> 0, Y -> 1",
        ),
        Dataset(
            "arabidopsis",
            "repo:benchmarks/glmm/data/real/arabidopsis.csv",
            {
                "amd": ["clipped", "unclipped"],
                "status": ["Normal", "Petri.Plate", "Transplant"],
                "popu": None,
                "gen": None,
            },
        ),
        Dataset(
            "salamanders",
            "repo:benchmarks/glmm/data/real/salamanders.csv",
            {
                "spp": ["GP", "PR", "DM", "EC-A", "EC-L", "DES-L", "DF"],
                "mined": ["yes", "no"],
                "site": None,
            },
        ),
        Dataset(
            "owls",
            "repo:benchmarks/glmm/data/real/owls.csv",
            {
                "FoodTreatment": ["Deprived", "Satiated"],
                "SexParent": ["Female", "Male"],
                "Nest": None,
            },
        ),
        Dataset(
            "mmmec",
            "repo:benchmarks/glmm/data/real/mmmec.csv",
            {"region": None, "nation": None},
        ),
        Dataset(
            "soup",
            "repo:tests/data/clmm/soup.csv",  # ordinal's soup data, as the clmm tests use it
            {"SURENESS": ["1", "2", "3", "4", "5", "6"], "PROD": ["Ref", "Test"], "RESP": None},
            ordered=("SURENESS",),
        ),
    ]
}


@dataclass(frozen=True)
class Case:
    key: str
    data: str  # a DATASETS key
    # multilevel's spelling, passed to multilevel.glmer as is: "binomial", "poisson",
    # "negative_binomial" (NB2, theta estimated), "Gamma(log)" (shape estimated); or
    # "ordinal": a cumulative link mixed model (logit link, flexible thresholds) of an
    # ordered response, multilevel.clmm / ordinal::clmm instead of glmer. Each other
    # runner maps it to its own spelling (and the driver marks a case unsupported for an
    # engine that cannot fit the family).
    family: str
    nagq: int
    formula: str  # multilevel's and lme4's formula
    formulas: dict[str, str] = field(default_factory=dict)  # engine -> its own spelling

    def formula_for(self, engine: str) -> str:
        return self.formulas.get(engine, self.formula)

    @property
    def dataset(self) -> Dataset:
        return DATASETS[self.data]


CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
# glmm's cbind() takes two column names; mixedlm spells binomial trials "successes / trials"
CBPP_OTHER = {
    "glmm": "cbind(incidence, fail) ~ period + (1 | herd)",
    "mixedlm": "incidence / size ~ period + (1 | herd)",
}
CONTRA = "use ~ age + age2 + urban + livch + (1 | district)"
GROUSE = "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION)"
SIM = "y ~ x1 + x2 + (1 | g)"
FAMILY_SIM = "y ~ x + (1 | g)"
ORDINAL = "ordinal"  # the family of the cumulative link (clmm) cases

CASES = {
    c.key: c
    for c in [
        Case("cbpp-1", "cbpp", "binomial", 1, CBPP, CBPP_OTHER),
        Case("cbpp-25", "cbpp", "binomial", 25, CBPP, CBPP_OTHER),
        Case("contra-1", "contraception", "binomial", 1, CONTRA),
        Case("contra-15", "contraception", "binomial", 15, CONTRA),
        Case("grouse-1", "grouseticks", "poisson", 1, GROUSE),
        Case("sim-1", "binary_sim", "binomial", 1, SIM),
        Case("sim-25", "binary_sim", "binomial", 25, SIM),
        Case("nb-1", "nb_sim", "negative_binomial", 1, FAMILY_SIM),
        Case("gamma-1", "gamma_sim", "Gamma(log)", 1, FAMILY_SIM),
        Case("clmm-1", "clmm_sim", ORDINAL, 1, "rating ~ x1 + x2 + (1 | rater)"),
        # the first 20,000 rows (400 raters): ordinal::clmm on all 100,000 takes > 15 min
        Case("clmm-1-20k", "clmm_sim_20k", ORDINAL, 1, "rating ~ x1 + x2 + (1 | rater)"),
        Case("clmm-soup", "soup", ORDINAL, 1, "SURENESS ~ PROD + (1 | RESP)"),
        Case(
            "verbagg-1",
            "verbagg",
            "binomial",
            1,
            "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)",
        ),
        Case(
            "arabidopsis-1",
            "arabidopsis",
            "poisson",
            1,
            "total_fruits ~ nutrient*amd + rack + status + (1 | popu) + (1 | gen)",
        ),
        Case("salamanders-1", "salamanders", "poisson", 1, "count ~ spp + mined + (1 | site)"),
        Case(
            "owls-1",
            "owls",
            "poisson",
            1,
            "SiblingNegotiation ~ FoodTreatment*SexParent + offset(lbs) + (1 | Nest)",
        ),
        Case(
            "mmmec-1",
            "mmmec",
            "poisson",
            1,
            "deaths ~ uvb + offset(lexp) + (1 | region) + (1 | nation)",
        ),
    ]
}


def _source_path(d: Dataset) -> Path:
    if d.source.startswith("sim:"):
        import simulate  # local module; writes the file on first use

        return simulate.ensure(d.source[4:])
    if d.source.startswith("repo:"):
        return REPO / d.source[5:]
    return SHARED_DATA / d.source


def prepare(d: Dataset) -> Path:
    """Write (once) the CSV every engine reads for data set ``d``; returns its path."""
    path = d.prepared_path()
    if path.exists():
        return path
    df = pd.read_csv(_source_path(d))
    if d.name == "cbpp":
        df["fail"] = df["size"] - df["incidence"]
    elif d.name == "contraception":
        df["use"] = (df["use"] == "Y").astype(int)
    elif d.name == "verbagg":
        df["r2"] = (df["r2"] == "Y").astype(int)
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)
    return path


def load(d: Dataset) -> pd.DataFrame:
    """Read the prepared CSV; factor columns become pandas Categoricals of strings
    (ordered ones, ``d.ordered``, ordered Categoricals)."""
    df = pd.read_csv(d.prepared_path())
    for col, levels in d.factors.items():
        values = df[col].astype(str)
        if levels is None:
            levels = [str(v) for v in sorted(df[col].unique())]  # numbers sort numerically
        df[col] = pd.Categorical(values, categories=levels, ordered=col in d.ordered)
    return df


def factor_spec(d: Dataset) -> str:
    """Factor columns for the R runner: ``col[:lev1,lev2[:ordered]];col2``."""
    specs = []
    for col, lev in d.factors.items():
        spec = col if lev is None else f"{col}:{','.join(lev)}"
        if col in d.ordered:
            if lev is None:
                raise ValueError(f"ordered factor {col!r} needs its levels")
            spec += ":ordered"
        specs.append(spec)
    return ";".join(specs)
