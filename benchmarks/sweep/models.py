"""Model specs shared by all runners (python side); also dumped to models.json for R."""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
# key: (csv, formula, REML, factor columns)
MODELS = [
    ("dyestuff", "dyestuff", "Yield ~ 1 + (1 | Batch)", True, ["Batch"]),
    ("ergo", "ergo", "effort ~ Type + (1 | Subject)", True, ["Type", "Subject"]),
    (
        "cake",
        "cake",
        "angle ~ recipe + temperature + (1 | replicate) + (1 | reprec)",
        True,
        ["recipe", "temperature", "replicate", "reprec"],
    ),
    (
        "assay",
        "assay",
        "logDens ~ sample + dilut + (1 | Block) + (1 | bs) + (1 | bd)",
        True,
        ["sample", "dilut", "Block", "bs", "bd"],
    ),
    (
        "dialyzer",
        "dialyzer",
        "rate ~ pressure + pressure2 + QB + (pressure | Subject)",
        True,
        ["QB", "Subject"],
    ),
    ("igf", "igf", "conc ~ age + (age | Lot)", True, ["Lot"]),
    (
        "grunfeld",
        "grunfeld",
        "invest ~ value + capital + (1 | firm) + (1 | year)",
        True,
        ["firm", "year"],
    ),
    ("milk", "milk", "protein ~ Diet + Time + (Time | Cow)", True, ["Diet", "Cow"]),
    ("milk_ML", "milk", "protein ~ Diet + Time + (Time | Cow)", False, ["Diet", "Cow"]),
    ("spruce", "spruce", "logSize ~ d + (d | Tree) + (1 | plot)", True, ["Tree", "plot"]),
    (
        "blackmore",
        "blackmore",
        "lex ~ age8 + group + age8grp + (age8 | subject)",
        True,
        ["group", "subject"],
    ),
    ("nlschools", "nlschools", "lang ~ IQ + SES + COMB + (IQ | class)", True, ["COMB", "class"]),
    (
        "nlschools_ML",
        "nlschools",
        "lang ~ IQ + SES + COMB + (IQ | class)",
        False,
        ["COMB", "class"],
    ),
    (
        "carrots",
        "carrots",
        "Preference ~ sens2 + Homesize + (1 + sens2 | Consumer) + (1 | Product)",
        True,
        ["Homesize", "Consumer", "Product"],
    ),
    (
        "carrots_ML",
        "carrots",
        "Preference ~ sens2 + Homesize + (1 + sens2 | Consumer) + (1 | Product)",
        False,
        ["Homesize", "Consumer", "Product"],
    ),
    ("gcsemv", "gcsemv", "course ~ male + (male | school)", True, ["school"]),
    (
        "psid",
        "psid",
        "lwage ~ exper + exper2 + education + gender + (exper | id) + (1 | year)",
        True,
        ["gender", "id", "year"],
    ),
    (
        "psid_ML",
        "psid",
        "lwage ~ exper + exper2 + education + gender + (exper | id) + (1 | year)",
        False,
        ["gender", "id", "year"],
    ),
    (
        "municip",
        "municipalities",
        "expend ~ revenue + grants + (1 | municipality) + (1 | year)",
        True,
        ["municipality", "year"],
    ),
    (
        "guns",
        "guns",
        "lviolent ~ law + lprisoners + (1 + t | state) + (1 | year)",
        True,
        ["law", "state", "year"],
    ),
    (
        "guns_t",
        "guns",
        "lviolent ~ law + lprisoners + t + (1 + t | state) + (1 | year)",
        True,
        ["law", "state", "year"],
    ),
    (
        "soybean",
        "soybean",
        "lweight ~ t + t2 + Variety + Year + (t + t2 | Plot)",
        True,
        ["Variety", "Year", "Plot"],
    ),
    ("wheat2", "wheat2", "yield ~ variety + (1 | Block)", True, ["variety", "Block"]),
    (
        "socatt",
        "socatt",
        "numpos ~ year + party + class + gender + age + (1 | district) + (1 | respond)",
        True,
        ["year", "party", "class", "gender", "district", "respond"],
    ),
    ("vocab", "vocab", "vocabulary ~ educ + sex + (educ | year)", True, ["sex", "year"]),
    ("vocab_ML", "vocab", "vocabulary ~ educ + sex + (educ | year)", False, ["sex", "year"]),
    (
        "gssvocab",
        "gssvocab",
        "vocab ~ educ + age + gender + nativeBorn + (educ | year) + (educ | ageGroup)",
        True,
        ["gender", "nativeBorn", "year", "ageGroup"],
    ),
    (
        "gssvocab_ML",
        "gssvocab",
        "vocab ~ educ + age + gender + nativeBorn + (educ | year) + (educ | ageGroup)",
        False,
        ["gender", "nativeBorn", "year", "ageGroup"],
    ),
    ("vocab3", "vocab", "vocabulary ~ educ + sex + (educ + sex | year)", True, ["sex", "year"]),
    (
        "cps1988",
        "cps1988",
        "lwage ~ education + ethnicity + smsa + parttime + region + (1 + education | experience)",
        True,
        ["ethnicity", "smsa", "parttime", "region", "experience"],
    ),
    (
        "cpssw8",
        "cpssw8",
        "learn ~ education + gender + (1 + gender | age) + (1 | region)",
        True,
        ["gender", "age", "region"],
    ),
    (
        "fertility",
        "fertility",
        "work ~ morekids + boy1 + boy2 + afam + hispanic + other + (1 + morekids | age)",
        True,
        ["afam", "hispanic", "other", "age"],
    ),
    (
        "fertility_ML",
        "fertility",
        "work ~ morekids + boy1 + boy2 + afam + hispanic + other + (1 + morekids | age)",
        False,
        ["afam", "hispanic", "other", "age"],
    ),
]
SPEC = {
    k: dict(csv=os.path.join(HERE, "data", c + ".csv"), formula=f, reml=r, factors=fa)
    for k, c, f, r, fa in MODELS
}


def load(key):
    import pandas as pd

    s = SPEC[key]
    df = pd.read_csv(s["csv"], keep_default_na=False, na_values=["", "NA"])
    for c in s["factors"]:
        df[c] = df[c].astype(str)
    return df


if __name__ == "__main__":
    json.dump(
        {"order": [m[0] for m in MODELS], "spec": SPEC},
        open(os.path.join(HERE, "models.json"), "w"),
        indent=1,
    )
    print(len(MODELS))
