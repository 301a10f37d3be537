"""``python -m experiments ablation|downstream``: run a paper experiment, write OUT/results.json + results.md."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from experiments.ablation import VARIANTS, pick_variants, run_ablation
from experiments.downstream import run_downstream
from experiments.setup import RunSettings
from experiments.tables import ablation_markdown, downstream_markdown, write_results
from medim.config import ConfigError

DEFAULT_CLASSIFIERS = Path.home() / ".cache" / "medim" / "domain-classifiers"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="tiny", help="model/train/tokenizer preset (tiny, small)")
    parser.add_argument("--steps", type=int, default=300, help="training steps of every model (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, init, training, sampling")
    parser.add_argument("--samples", type=int, default=32, help="held-out pairs generated per modality")
    parser.add_argument("--scale", type=float, default=1.0, help="synthetic data scale (default 1.0)")
    parser.add_argument("--sampler-steps", type=int, default=None, help="MaskGIT steps (default: preset's)")
    parser.add_argument(
        "--workspace", type=Path, default=None, help="workspace folder (default OUT/workspace)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0: all cores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__)
    sub = parser.add_subparsers(dest="experiment", required=True)
    ablation = sub.add_parser("ablation", help="attention / time-input ablation")
    _common(ablation)
    ablation.add_argument(
        "--variant",
        action="append",
        choices=[v.name for v in VARIANTS],
        help="run only these variants (repeatable; default all)",
    )
    ablation.add_argument(
        "--classifier-dir", type=Path, default=DEFAULT_CLASSIFIERS, help="cache of the domain classifiers"
    )
    ablation.add_argument(
        "--classifier-steps", type=int, default=150, help="domain classifier training steps"
    )
    downstream = sub.add_parser("downstream", help="report generation trained with generated pairs")
    _common(downstream)
    downstream.add_argument(
        "--generated", type=int, default=256, help="generated pairs added to the real ones"
    )
    downstream.add_argument(
        "--prompt-tokens",
        type=int,
        default=0,
        help="report prefix tokens per generated pair (0: unconditional)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    settings = RunSettings(
        preset=args.preset,
        steps=args.steps,
        seed=args.seed,
        samples=args.samples,
        scale=args.scale,
        workspace=args.workspace or args.out / "workspace",
        classifier_dir=getattr(args, "classifier_dir", DEFAULT_CLASSIFIERS),
        classifier_steps=getattr(args, "classifier_steps", 150),
        sampler_steps=args.sampler_steps,
        threads=args.threads,
        progress=not args.no_progress,
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.experiment == "ablation":
            results = run_ablation(settings, pick_variants(args.variant))
        else:
            if args.generated < 1 or args.prompt_tokens < 0:
                raise ConfigError("--generated must be >= 1 and --prompt-tokens >= 0")
            results = run_downstream(settings, generated=args.generated, prompt_tokens=args.prompt_tokens)
    except ConfigError as error:
        print(f"experiments: {error}", file=sys.stderr)
        return 2
    results["command"] = "python -m experiments " + shlex.join(argv)
    results["wall_seconds"] = time.perf_counter() - started
    render = ablation_markdown if args.experiment == "ablation" else downstream_markdown
    write_results(args.out, results, render(results))
    print(f"experiments: wrote {args.out / 'results.json'} and {args.out / 'results.md'}")
    return 0
