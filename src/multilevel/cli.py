"""Command line.

    multilevel demo                         fit the bundled High School and Beyond model
    multilevel datasets                     list the bundled data sets
    multilevel fit DATA.csv "FORMULA" [--ml] [--style lme4|nlme] [--json]

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


def _fit(args: argparse.Namespace) -> int:
    data = _read(args.data)
    reml = not args.ml
    if args.style == "nlme":
        from multilevel.workflow.nlme import lme_from_formula

        fit = lme_from_formula(args.formula, data, method="REML" if reml else "ML")
    else:
        from multilevel import lmer

        fit = lmer(args.formula, data, REML=reml)
    if args.json:
        print(fit.to_json(indent=2))
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
    fit = sub.add_parser("fit", help="fit a linear mixed model to a CSV file")
    fit.add_argument("data", help="CSV file with a header row")
    fit.add_argument("formula", help='lme4 formula, e.g. "y ~ x + (x | g)"')
    fit.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    fit.add_argument("--style", choices=["lme4", "nlme"], default="lme4")
    fit.add_argument("--json", action="store_true", help="print every number as JSON")
    fit.set_defaults(run=_fit)
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            # warnings reach the summary text; keep stderr for errors
            warnings.simplefilter("ignore")
            return args.run(args)
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
