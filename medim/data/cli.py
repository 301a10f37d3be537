"""medim-data: generate synthetic hospitals (``synth``) or prepare a site's archive for training (``prepare``)."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``medim-data`` console script; returns the exit code."""
    from medim.data import prepare, synthetic

    parser = argparse.ArgumentParser(prog="medim-data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    synthetic.add_arguments(sub.add_parser("synth", help="write synthetic hospitals in the real formats"))
    prepare.add_arguments(
        sub.add_parser("prepare", help="index an archive, prepare its images, write manifest.jsonl")
    )
    args = parser.parse_args(argv)
    return int({"synth": synthetic.run, "prepare": prepare.run}[args.command](args))
