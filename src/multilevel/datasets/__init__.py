"""Bundled example data sets: ``load(name)`` returns a pandas DataFrame.

Factors come as pandas Categoricals with R's level order (the first level is
the reference level of treatment contrasts); grouping columns keep their data
type (numeric grouping columns are treated as factors by the model functions).
``describe(name)`` gives source, size and columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import pandas as pd

from multilevel.errors import DataError


@dataclass(frozen=True)
class DatasetInfo:
    file: str
    source: str
    columns: dict[str, str]
    levels: dict[str, list[str]]

    def __str__(self) -> str:
        cols = "\n".join(f"  {k}: {v}" for k, v in self.columns.items())
        return f"{self.file} ({self.source})\n{cols}"


DATASETS: dict[str, DatasetInfo] = {
    "hsb": DatasetInfo(
        "hsb.csv",
        "High School and Beyond subset (Bryk & Raudenbush): 7,185 students in 160 schools; "
        "R nlme::MathAchieve joined with nlme::MathAchSchool",
        {
            "school": "school id (160 schools)",
            "ses": "student socio-economic status",
            "mathach": "mathematics achievement score",
            "sector": "school sector: Public (reference) or Catholic",
            "meanses": "school mean of ses over the sampled students",
            "cses": "ses centred at the school mean (ses - meanses)",
        },
        {"sector": ["Public", "Catholic"]},
    ),
    "hsb_students": DatasetInfo(
        "hsb_students.csv",
        "High School and Beyond student table (R nlme::MathAchieve): 7,185 rows",
        {
            "school": "school id",
            "minority": "minority student: No/Yes",
            "sex": "Female/Male",
            "ses": "socio-economic status",
            "mathach": "mathematics achievement",
            "meanses_file": "the file's own school mean SES (differs slightly from the mean "
            "over sampled students)",
        },
        {"minority": ["No", "Yes"], "sex": ["Female", "Male"]},
    ),
    "hsb_schools": DatasetInfo(
        "hsb_schools.csv",
        "High School and Beyond school table (R nlme::MathAchSchool): 160 rows",
        {
            "school": "school id",
            "size": "school enrolment",
            "sector": "Public/Catholic",
            "pracad": "proportion of students in the academic track",
            "disclim": "disciplinary climate",
            "himinty": "1 if more than 40% minority students",
            "meanses_file": "mean SES of the school (file value)",
        },
        {"sector": ["Public", "Catholic"]},
    ),
    "sleepstudy": DatasetInfo(
        "sleepstudy.csv",
        "lme4::sleepstudy: reaction times under sleep deprivation, 18 subjects x 10 days",
        {
            "Reaction": "average reaction time (ms)",
            "Days": "days of sleep deprivation",
            "Subject": "subject id",
        },
        {},
    ),
    "dyestuff": DatasetInfo(
        "dyestuff.csv",
        "lme4::Dyestuff: yield of dyestuff, 6 batches x 5 preparations",
        {"Batch": "batch A-F", "Yield": "yield (grams)"},
        {},
    ),
    "dyestuff2": DatasetInfo(
        "dyestuff2.csv",
        "lme4::Dyestuff2: simulated data of Dyestuff's design (a zero batch variance)",
        {"Batch": "batch A-F", "Yield": "simulated yield"},
        {},
    ),
    "penicillin": DatasetInfo(
        "penicillin.csv",
        "lme4::Penicillin: 144 diameters, 24 plates crossed with 6 samples",
        {"diameter": "zone of inhibition (mm)", "plate": "plate a-x", "sample": "sample A-F"},
        {},
    ),
    "pastes": DatasetInfo(
        "pastes.csv",
        "lme4::Pastes: paste strength, 3 casks nested in each of 10 batches, 2 assays each",
        {
            "strength": "paste strength",
            "batch": "delivery batch A-J",
            "cask": "cask a-c within batch",
            "sample": "batch:cask label",
        },
        {},
    ),
    "cbpp": DatasetInfo(
        "cbpp.csv",
        "lme4::cbpp: contagious bovine pleuropneumonia, 56 herd-periods in 15 herds",
        {
            "herd": "herd id",
            "incidence": "new cases",
            "size": "herd size",
            "period": "period 1-4 (factor)",
        },
        {"period": ["1", "2", "3", "4"]},
    ),
    "contraception": DatasetInfo(
        "contraception.csv",
        "mlmRev::Contraception: 1,934 Bangladeshi women in 60 districts",
        {
            "woman": "id",
            "district": "district id",
            "use": "contraceptive use N/Y",
            "livch": "living children 0, 1, 2, 3+",
            "age": "centred age",
            "urban": "urban N/Y",
            "age2": "age squared",
        },
        {"use": ["N", "Y"], "urban": ["N", "Y"], "livch": ["0", "1", "2", "3+"]},
    ),
    "grouseticks": DatasetInfo(
        "grouseticks.csv",
        "lme4::grouseticks: ticks on 403 red grouse chicks",
        {
            "INDEX": "chick",
            "TICKS": "tick count",
            "BROOD": "brood",
            "HEIGHT": "altitude (m)",
            "YEAR": "95, 96, 97 (factor)",
            "LOCATION": "location",
            "cHEIGHT": "HEIGHT centred",
        },
        {"YEAR": ["95", "96", "97"]},
    ),
    "wine": DatasetInfo(
        "wine.csv",
        "ordinal::wine: bitterness ratings of 72 wines by 9 judges",
        {
            "response": "bitterness score",
            "rating": "ordered rating 1-5",
            "temp": "cold/warm",
            "contact": "no/yes",
            "bottle": "bottle",
            "judge": "judge",
        },
        {"temp": ["cold", "warm"], "contact": ["no", "yes"]},
    ),
}


def names() -> list[str]:
    """The names ``load`` accepts."""
    return list(DATASETS)


def describe(name: str) -> DatasetInfo:
    return DATASETS[_check(name)]


def _check(name: str) -> str:
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; available: {', '.join(DATASETS)}")
    return name


def load(name: str) -> pd.DataFrame:
    """Load a bundled data set as a DataFrame (``df.attrs['name']`` is its name)."""
    info = DATASETS[_check(name)]
    with resources.files(__package__).joinpath(info.file).open("r") as fh:
        df = pd.read_csv(fh)
    for col, levels in info.levels.items():
        values = df[col].astype(str)
        df[col] = pd.Categorical(values, categories=levels)
    df.attrs["name"] = name
    return df
