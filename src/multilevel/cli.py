"""Command line.

    multilevel demo                         fit the bundled High School and Beyond model
    multilevel datasets                     list the bundled data sets
    multilevel fit DATA.csv "FORMULA" [--ml] [--style lme4|nlme] [--json]
                 [--family F [--nAGQ K]] [--ordinal [--link L] [--threshold T]]
                 [--levels COL=a,b,c ...] [--ddf Satterthwaite|Kenward-Roger]

``--family`` fits a GLMM (``binomial``, ``poisson``, ``"Gamma(log)"``,
``negative_binomial``...; ``cbind(successes, failures) ~ ...`` for binomial
counts), ``--ordinal`` a cumulative link mixed model (the response's order
from ``--levels`` or, for numbers, their numeric order), ``--levels`` fixes a
factor's level order (first = reference), ``--ddf`` adds lmerTest's
denominator degrees of freedom and p-values to an LMM summary.

Errors a user can act on (a wrong path, an unknown column, a bad formula)
print one line and exit with status 2; formulas are evaluated by the safe
evaluator, never as code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HSB_FORMULA = "mathach ~ meanses*cses + sector*cses + (cses | school)"
HSB_FIXED = "mathach ~ meanses*cses + sector*cses"
HSB_RANDOM = "~ cses | school"


def _demo(args: argparse.Namespace) -> int:
    from multilevel import datasets

    hsb = datasets.load("hsb")
    if args.style == "nlme":
        from multilevel.workflow.nlme import lme

        print(lme(HSB_FIXED, HSB_RANDOM, hsb, method="REML").summary())
    else:
        from multilevel import lmer

        print(lmer(HSB_FORMULA, hsb).summary())
    return 0


def _datasets(args: argparse.Namespace) -> int:
    from multilevel import datasets

    for name in datasets.names():
        info = datasets.describe(name)
        print(f"{name:14s} {info.source}")
    return 0


def _read(path: str):
    import pandas as pd

    from multilevel.errors import DataError

    p = Path(path)
    if not p.is_file():
        raise DataError(f"no such file: {path}")
    try:
        df = pd.read_csv(p)
    except Exception as exc:  # pandas raises many types for unreadable files
        raise DataError(f"cannot read {path} as CSV: {exc}") from None
    df.attrs["name"] = p.stem
    return df


def _levels(specs: list[str] | None) -> dict[str, list[str]] | None:
    from multilevel.errors import ModelError

    if not specs:
        return None
    out = {}
    for spec in specs:
        col, sep, values = spec.partition("=")
        if not sep or not col.strip() or not values.strip():
            raise ModelError(f"--levels takes COLUMN=level1,level2,..., not {spec!r}")
        out[col.strip()] = [v.strip() for v in values.split(",")]
    return out


def _as_labels(data, levels: dict | None):
    """Columns named in --levels read as text, so that their labels match."""
    for col in levels or {}:
        if col in data.columns:
            data[col] = data[col].astype(str)
    return data


def _fit(args: argparse.Namespace) -> int:
    from multilevel.errors import ModelError

    data = _read(args.data)
    reml = not args.ml
    levels = _levels(args.levels)
    data = _as_labels(data, levels)
    if args.family is not None or args.ordinal:
        if args.family is not None and args.ordinal:
            raise ModelError("--family and --ordinal exclude each other")
        if args.style == "nlme" or args.ddf:
            raise ModelError("--style nlme and --ddf are for linear mixed models")
        if args.ordinal:
            from multilevel import clmm

            response = args.formula.split("~")[0].strip()
            if levels is None or response not in levels:
                values = sorted(data[response].dropna().unique())
                levels = {**(levels or {}), response: [str(v) for v in values]}
                data[response] = data[response].astype(str)
            fit = clmm(args.formula, data, link=args.link, threshold=args.threshold,
                       nAGQ=args.nAGQ, levels=levels)  # fmt: skip
        else:
            from multilevel import glmer

            fit = glmer(args.formula, data, family=args.family, nAGQ=args.nAGQ, levels=levels)
        print(fit.to_json(indent=2) if args.json else fit.summary())
        return 0
    if args.style == "nlme":
        from multilevel.workflow.nlme import lme_from_formula

        if args.ddf:
            raise ModelError("--ddf is for the lme4 style (nlme's summary has its own DF)")
        fit = lme_from_formula(args.formula, data, method="REML" if reml else "ML", levels=levels)
    else:
        from multilevel import lmer

        fit = lmer(args.formula, data, REML=reml, levels=levels)
    if args.json:
        print(fit.to_json(indent=2))
    elif args.ddf:
        print(fit.summary(ddf=args.ddf))
    else:
        print(fit.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    import warnings

    from multilevel.errors import MultilevelError

    parser = argparse.ArgumentParser(
        prog="multilevel", description="Multilevel (mixed-effects) models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="fit the bundled High School and Beyond model")
    demo.add_argument("--style", choices=["nlme", "lme4"], default="nlme")
    demo.set_defaults(run=_demo)
    ds = sub.add_parser("datasets", help="list the bundled data sets")
    ds.set_defaults(run=_datasets)
    fit = sub.add_parser("fit", help="fit a mixed model to a CSV file")
    fit.add_argument("data", help="CSV file with a header row")
    fit.add_argument("formula", help='lme4 formula, e.g. "y ~ x + (x | g)"')
    fit.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    fit.add_argument("--style", choices=["lme4", "nlme"], default="lme4")
    fit.add_argument("--json", action="store_true", help="print every number as JSON")
    fit.add_argument("--family", help='a GLMM family: binomial, poisson, "Gamma(log)", ...')
    fit.add_argument("--nAGQ", type=int, default=1, help="quadrature nodes (GLMM, ordinal)")
    fit.add_argument("--ordinal", action="store_true", help="cumulative link mixed model")
    fit.add_argument("--link", default="logit", help="ordinal link (logit, probit, ...)")
    fit.add_argument("--threshold", default="flexible", help="ordinal thresholds")
    fit.add_argument("--levels", action="append", metavar="COL=a,b,c",
                     help="level order of a factor (first = reference); repeatable")  # fmt: skip
    fit.add_argument("--ddf", choices=["Satterthwaite", "Kenward-Roger"],
                     help="denominator DF and p-values in an LMM summary")  # fmt: skip
    fit.set_defaults(run=_fit)
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            # warnings reach the summary text; keep stderr for errors
            warnings.simplefilter("ignore")
            return args.run(args)
    except BrokenPipeError:  # the reader (| head) stopped reading: not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except MultilevelError as exc:
        # one line: a formula error names its position, the caret drawing is for Python
        print(f"multilevel: error: {_first_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug of ours: one line and where to report it, no traceback
        print(
            f"multilevel: internal error ({type(exc).__name__}: {_first_line(exc)}); please "
            "report it with the command and data that caused it",
            file=sys.stderr,
        )
        return 1


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
