"""``medim-tokenizer``: train a VQ image tokenizer, measure it, encode prepared folders, import taming/Chameleon.

    medim-tokenizer train  --data PREPARED_DIR [--data ...] --out DIR [--preset small] [--steps N]
    medim-tokenizer encode --tokenizer DIR --data PREPARED_DIR [--data ...]
    medim-tokenizer report --tokenizer DIR --data PREPARED_DIR [--data ...] [--out DIR]
    medim-tokenizer import-taming --ckpt vqgan.ckpt --yaml vqgan.yaml --out DIR

``train`` resumes when ``--out`` already holds a checkpoint of the same architecture.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from medim.config import ConfigError, load_preset, presets
from medim.metrics.domain import DomainTrainConfig, load_domain_classifier, train_domain_classifier
from medim.tokenize.taming import load_taming
from medim.tokenize.vq import META_FILE, load_tokenizer, read_meta
from medim.tokenize.vq_cache import encode_folder
from medim.tokenize.vq_config import TokenizerConfig
from medim.tokenize.vq_data import HELD_OUT, load_images
from medim.tokenize.vq_findings import round_trip_findings
from medim.tokenize.vq_report import reconstruction_report
from medim.tokenize.vq_train import train_tokenizer


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medim-tokenizer", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train (or resume) a tokenizer on prepared data folders")
    train.add_argument(
        "--data", type=Path, action="append", required=True, help="prepared folder (repeatable)"
    )
    train.add_argument("--out", type=Path, required=True, help="output folder (checkpoints, report)")
    train.add_argument(
        "--preset", default="small", help=f"configs/tokenizer preset ({', '.join(presets('tokenizer'))})"
    )
    train.add_argument("--steps", type=int, help="total optimisation steps (overrides train.steps)")
    train.add_argument("--batch-size", type=int, help="images per step (overrides train.batch_size)")
    train.add_argument(
        "--max-minutes", type=float, help="stop after this wall time (overrides train.max_minutes)"
    )
    train.add_argument("--threads", type=int, help="torch CPU threads, 0 = all (overrides train.threads)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    encode = sub.add_parser("encode", help="encode prepared folders into code caches (re-used when present)")
    encode.add_argument("--tokenizer", type=Path, required=True, help="tokenizer folder")
    encode.add_argument(
        "--data", type=Path, action="append", required=True, help="prepared folder (repeatable)"
    )
    encode.add_argument("--batch-size", type=int, default=64)
    encode.add_argument("--no-progress", action="store_true")

    report = sub.add_parser("report", help="reconstruction report of a tokenizer on held-out images")
    report.add_argument("--tokenizer", type=Path, required=True, help="tokenizer folder")
    report.add_argument(
        "--data", type=Path, action="append", required=True, help="prepared folder (repeatable)"
    )
    report.add_argument("--out", type=Path, help="where to write the report (default: the tokenizer folder)")

    findings = sub.add_parser(
        "findings",
        help="are findings recognisable after a round trip? (domain classifier on held-out images)",
    )
    findings.add_argument("--tokenizer", type=Path, required=True, help="tokenizer folder")
    findings.add_argument(
        "--data", type=Path, action="append", required=True, help="prepared folder (repeatable)"
    )
    findings.add_argument(
        "--classifier-steps", type=int, default=400, help="training steps of each domain classifier"
    )
    findings.add_argument(
        "--classifier",
        type=Path,
        action="append",
        default=[],
        help="a saved domain classifier (.safetensors, repeatable); modalities without one get one trained",
    )
    findings.add_argument("--out", type=Path, help="findings.json path (default: in the tokenizer folder)")

    imp = sub.add_parser("import-taming", help="convert a taming/Chameleon VQGAN into a tokenizer folder")
    imp.add_argument("--ckpt", type=Path, required=True, help="vqgan.ckpt (torch file with a state_dict)")
    imp.add_argument("--yaml", type=Path, required=True, help="vqgan.yaml (taming model.params structure)")
    imp.add_argument("--out", type=Path, required=True, help="output tokenizer folder")
    return parser


def _train_config(args: argparse.Namespace) -> TokenizerConfig:
    base = load_preset(TokenizerConfig, "tokenizer", args.preset)
    train: dict[str, Any] = asdict(base.train)
    for flag, key in (
        ("steps", "steps"),
        ("batch_size", "batch_size"),
        ("max_minutes", "max_minutes"),
        ("threads", "threads"),
    ):
        value = getattr(args, flag)
        if value is not None:
            train[key] = value
    return load_preset(TokenizerConfig, "tokenizer", args.preset, train=train)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "train":
        config = _train_config(args)
        result = train_tokenizer(config, args.data, args.out, progress=not args.no_progress)
        return {
            "out": str(result.out),
            "step": result.step,
            "resumed_from": result.start_step,
            "seconds": round(result.seconds, 1),
            "image_tokens": config.image_tokens,
            "codebook_size": config.codebook_size,
            "reconstruction": asdict(result.report)["modalities"],
        }
    if args.command == "encode":
        tokenizer = load_tokenizer(args.tokenizer)
        caches = [
            encode_folder(tokenizer, d, batch_size=args.batch_size, progress=not args.no_progress)
            for d in args.data
        ]
        return {"caches": [{"path": str(c.path), "images": len(c.ids)} for c in caches]}
    if args.command == "report":
        tokenizer = load_tokenizer(args.tokenizer)
        heldout = load_images(args.data, HELD_OUT, tokenizer.config.resolution)
        step = int(read_meta(args.tokenizer)["step"]) if (args.tokenizer / META_FILE).is_file() else 0
        report = reconstruction_report(tokenizer, heldout, args.out or args.tokenizer, step=step)
        return asdict(report)
    if args.command == "findings":
        return _findings(args)
    model = load_taming(args.ckpt, args.yaml)
    model.save(args.out, extra={"imported_from": str(args.ckpt)})
    return {
        "out": str(args.out),
        "image_tokens": model.config.image_tokens,
        "codebook_size": model.config.codebook_size,
    }


def _findings(args: argparse.Namespace) -> dict[str, Any]:
    """Round-trip finding agreement per modality present in the held-out images; written to findings.json."""
    tokenizer = load_tokenizer(args.tokenizer)
    heldout = load_images(args.data, HELD_OUT, tokenizer.config.resolution)
    given = {
        c.spec.modality: (c, str(path)) for path in args.classifier for c in [load_domain_classifier(path)]
    }
    results: dict[str, Any] = {}
    for modality in sorted(set(heldout.modalities)):
        if modality in given:
            classifier, source = given[modality]
        else:
            config = DomainTrainConfig(modality=modality, steps=args.classifier_steps, image_size=64)
            trained = train_domain_classifier(config)
            classifier, source = (
                trained.classifier,
                f"trained {config.steps} steps, accuracy {trained.accuracy:.3f}",
            )
        results[modality] = asdict(round_trip_findings(tokenizer, heldout, classifier)) | {
            "classifier": source
        }
    out = args.out or args.tokenizer / "findings.json"
    out.write_text(json.dumps(results, indent=2))
    return results


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``medim-tokenizer`` console script; prints a JSON summary, returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        summary = _run(args)
    except (ConfigError, ValueError, FileNotFoundError, KeyError) as err:
        print(f"medim-tokenizer {args.command}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
