"""Benchmark cases: data file, formula and factor columns.

Imported by the driver and by the Python runners (also under the separate
benchmark virtualenv), so it needs only pandas and numpy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

SHARED_DATA = Path(os.environ.get("BENCH_SHARED_DATA", "/work/shared/data"))
BENCH_DATA = Path(__file__).resolve().parent / "data"  # real data exported once (committed)
# lme4::InstEval's level order of dept (R's factor() on the export would sort them)
INSTEVAL_DEPT = ["15", "5", "10", "12", "6", "7", "4", "8", "9", "14", "1", "3", "11", "2"]


@dataclass(frozen=True)
class Case:
    key: str
    name: str
    formula: str
    # a file in SHARED_DATA, "data:FILE" for a file in benchmarks/data, or
    # "sim:NAME" for a simulate.py data set
    file: str
    # factor column -> level order (first is the reference), or None for the
    # sorted order of the values in the file
    factors: dict[str, list[str] | None] = field(default_factory=dict)
    crossed: bool = False
    REML: bool = True  # False: maximum likelihood (every engine is told so)
    max_repeats: int | None = None  # caps --repeats for a slow case

    def csv_path(self) -> Path:
        if self.file.startswith("sim:"):
            import simulate  # local module; generates the file on first use

            return simulate.ensure(self.file[4:])
        if self.file.startswith("data:"):
            return BENCH_DATA / self.file[5:]
        return SHARED_DATA / self.file

    @property
    def criterion_name(self) -> str:
        return "REML criterion" if self.REML else "deviance (-2 log-likelihood)"


CASES = {
    c.key: c
    for c in [
        Case(
            "a",
            "hsb",
            "mathach ~ meanses*cses + sector*cses + (cses | school)",
            "hsb.csv",
            {"sector": ["Public", "Catholic"], "school": None},
        ),
        Case(
            "b",
            "sleepstudy",
            "Reaction ~ Days + (Days | Subject)",
            "sleepstudy.csv",
            {"Subject": None},
        ),
        Case(
            "c",
            "penicillin",
            "diameter ~ 1 + (1 | plate) + (1 | sample)",
            "penicillin.csv",
            {"plate": None, "sample": None},
            crossed=True,
        ),
        Case(
            "d",
            "insteval_sim",
            "y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)",
            "sim:insteval_sim",
            {"service": ["0", "1"], "s": None, "d": None, "dept": None},
            crossed=True,
        ),
        Case("e", "large_sim", "y ~ 1 + x + (1 + x | g)", "sim:large_sim", {"g": None}),
        Case(
            "f",
            "insteval_ml",
            "y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)",
            "data:insteval.csv",
            {"service": ["0", "1"], "s": None, "d": None, "dept": INSTEVAL_DEPT},
            crossed=True,
            REML=False,
        ),
        Case(
            "g",
            "insteval_service_dept",
            "y ~ service*dept + (1 | s) + (1 | d)",
            "data:insteval.csv",
            {"service": ["0", "1"], "s": None, "d": None, "dept": INSTEVAL_DEPT},
            crossed=True,
        ),
        Case(
            "h",
            "egsingle_ml",
            "math ~ year + (year | childid) + (year | schoolid)",
            "data:egsingle.csv",
            {"childid": None, "schoolid": None},
            REML=False,
        ),
        Case(
            "i",
            "movielens_sim",
            "y ~ 1 + (1 | user) + (1 | item)",
            "sim:movielens_sim",
            {"user": None, "item": None},
            crossed=True,
        ),
        Case(
            "j",
            "crossed5000_sim",
            "y ~ x + (1 | a) + (1 | b)",
            "sim:crossed5000_sim",
            {"a": None, "b": None},
            crossed=True,
            max_repeats=3,
        ),
        # real data sets from R's packages (data/export_real.R), none of them
        # used to tune the engine before it was timed on them
        Case(
            "k",
            "scotssec",
            "attain ~ verbal*sex + (1 | primary) + (1 | second)",
            "data:real/scotssec.csv",
            {"sex": None, "primary": None, "second": None},
            crossed=True,
        ),
        Case(
            "l",
            "star",
            "math ~ gr + cltype + sx + eth + (1 | id) + (1 | tch) + (1 | sch)",
            "data:real/star.csv",
            {
                "gr": None,
                "cltype": None,
                "sx": None,
                "eth": None,
                "id": None,
                "tch": None,
                "sch": None,
            },
            crossed=True,
        ),  # fmt: skip
        Case(
            "m",
            "chem97",
            "score ~ gcsecnt + (1 | school) + (1 | lea)",
            "data:real/chem97.csv",
            {"school": None, "lea": None},
        ),
        Case(
            "n",
            "exam",
            "normexam ~ standLRT + (standLRT | school)",
            "data:real/exam.csv",
            {"school": None},
        ),  # fmt: skip
        Case(
            "o",
            "bdf",
            "langPOST ~ IQ.verb + sex + ses + (IQ.verb | schoolNR)",
            "data:real/bdf.csv",
            {"schoolNR": None},
        ),
        Case(
            "p",
            "machines",
            "score ~ Machine + (1 | Worker) + (1 | Worker:Machine)",
            "data:real/machines.csv",
            {"Machine": None, "Worker": None},
        ),
        Case(
            "q",
            "pastes",
            "strength ~ 1 + (1 | batch) + (1 | batch:cask)",
            "data:real/pastes.csv",
            {"batch": None, "cask": None},
        ),
        Case(
            "r",
            "oxboys",
            "height ~ age + I(age^2) + (age + I(age^2) | Subject)",
            "data:real/oxboys.csv",
            {"Subject": None},
        ),
        Case(
            "s",
            "orthodont",
            "distance ~ age*Sex + (age | Subject)",
            "data:real/orthodont.csv",
            {"Sex": None, "Subject": None},
        ),
        Case(
            "t",
            "early",
            "cog ~ age*trt + (age | id)",
            "data:real/early.csv",
            {"trt": None, "id": None},
        ),  # fmt: skip
        # real data sets added after the engine was tuned on a-t (2026-12-06)
        Case(
            "u",
            "pixel",
            "pixel ~ day + I(day^2) + (day | Dog) + (1 | Side:Dog)",
            "data:real/pixel.csv",
            {"Dog": None, "Side": None},
        ),
        Case(
            "v",
            "wafer",
            "current ~ voltage + I(voltage^2) + (voltage | Wafer/Site)",
            "data:real/wafer.csv",
            {"Wafer": None, "Site": None},
        ),
        Case("w", "rail", "travel ~ 1 + (1 | Rail)", "data:real/rail.csv", {"Rail": None}),
        Case(
            "x",
            "bodyweight",
            "weight ~ Time*Diet + (Time | Rat)",
            "data:real/bodyweight.csv",
            {"Diet": ["1", "2", "3"], "Rat": None},
        ),
        Case(
            "y",
            "oats",
            "yield ~ nitro + Variety + (1 | Block) + (1 | Block:Variety)",
            "data:real/oats.csv",
            {"Variety": ["Golden Rain", "Marvellous", "Victory"], "Block": None},
        ),
        Case(
            "z",
            "alfalfa",
            "Yield ~ Date*Variety + (1 | Block) + (1 | Block:Variety)",
            "data:real/alfalfa.csv",
            {
                "Date": ["None", "S1", "S20", "O7"],
                "Variety": ["Cossack", "Ladak", "Ranger"],
                "Block": None,
            },
        ),
        # vector terms beside other terms on real data, added after the
        # blocked kernel took such models (2026-12-06, seventh session)
        Case(
            "aa",
            "chem97_lea_slope",
            "score ~ gcsecnt + (1 | school) + (gcsecnt | lea)",
            "data:real/chem97.csv",
            {"school": None, "lea": None},
        ),
        Case(
            "ab",
            "chem97_school_slope",
            "score ~ gcsecnt + (gcsecnt | school) + (1 | lea)",
            "data:real/chem97.csv",
            {"school": None, "lea": None},
        ),
        Case(
            "ac",
            "star_school_grade",
            "math ~ gr + cltype + (1 | id) + (gr | sch)",
            "data:real/star.csv",
            {"gr": None, "cltype": None, "id": None, "sch": None},
        ),
    ]
}


def load(case: Case, path: Path | None = None) -> pd.DataFrame:
    """Read the case's CSV; factor columns become pandas Categoricals of strings
    (only an empty field or NA is missing: Alfalfa has a level "None")."""
    df = pd.read_csv(path or case.csv_path(), keep_default_na=False, na_values=["", "NA"])
    for col, levels in case.factors.items():
        values = df[col].astype(str)
        if levels is None:
            # numeric codes sort numerically (as R's factor() on numbers does)
            order = sorted(df[col].unique())
            levels = [str(v) for v in order]
        df[col] = pd.Categorical(values, categories=levels)
    return df


def factor_spec(case: Case) -> str:
    """Factor columns for the R runner: ``col[:lev1,lev2];col2``."""
    parts = [col if lev is None else f"{col}:{','.join(lev)}" for col, lev in case.factors.items()]
    return ";".join(parts)
