"""medim-data: prepare a site's imaging archive for training (``prepare``)."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``medim-data`` console script; returns the exit code."""
    from medim.data import prepare

    parser = argparse.ArgumentParser(prog="medim-data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    prepare.add_arguments(
        sub.add_parser("prepare", help="index an archive, prepare its images, write manifest.jsonl")
    )
    args = parser.parse_args(argv)
    return int({"prepare": prepare.run}[args.command](args))
