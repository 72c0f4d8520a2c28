"""Command line: ``python -m multilevel demo`` fits the High School and Beyond
model and prints its summary."""

from __future__ import annotations

import argparse
import sys

HSB_FORMULA = "mathach ~ meanses*cses + sector*cses + (cses | school)"


def demo() -> int:
    from . import datasets, lmer

    hsb = datasets.load("hsb")
    fit = lmer(HSB_FORMULA, hsb, REML=True)
    print(fit.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="multilevel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="fit the bundled High School and Beyond model and print it")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo()
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
