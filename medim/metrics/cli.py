"""``medim-eval``: paper metrics and clinical correctness from files; each command prints one JSON object.

Commands (keys documented in docs/metrics.md):

- ``reports --refs REFS.jsonl --hyps HYPS.jsonl [--protocol coco|medim]``: report-generation metrics; JSONL
  lines are objects with ``id`` and ``report``, matched by id;
- ``images --real DIR --fake DIR [--domain-classifier PATH]``: FID (and our domain FID / IS) of PNG folders;
- ``labels --refs REFS.jsonl --hyps HYPS.jsonl [--labeler NAME]``: clinical label P/R/F1;
- ``train-classifier --modality cxr|pathology --out PATH``: train our domain classifier on synthetic images.

Errors (unreadable or mismatched inputs, missing ``java``) are printed to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from medim.metrics.clinical import LABELERS, label_scores
from medim.metrics.domain import (
    MODALITIES,
    DomainTrainConfig,
    load_domain_classifier,
    save_domain_classifier,
    train_domain_classifier,
)
from medim.metrics.images import image_scores, load_png_folder
from medim.metrics.inception import InceptionWeightsError
from medim.metrics.reports import JavaNotFoundError, coco_scores, medim_scores


class InputError(ValueError):
    """An input file is unreadable, malformed, or does not match its partner."""


def read_reports(path: Path) -> dict[str, str]:
    """``id -> report`` from a JSONL file of ``{"id": ..., "report": ...}`` objects (ids unique)."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    reports: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{path}:{number}: invalid JSON ({error.msg})") from error
        if not isinstance(record, dict) or "id" not in record or not isinstance(record.get("report"), str):
            raise InputError(f"{path}:{number}: expected an object with 'id' and a string 'report'")
        key = str(record["id"])
        if key in reports:
            raise InputError(f"{path}:{number}: duplicate id {key!r}")
        reports[key] = record["report"]
    if not reports:
        raise InputError(f"{path}: no reports")
    return reports


def paired_reports(refs_path: Path, hyps_path: Path) -> tuple[list[str], list[str]]:
    """Reference and generated reports in the references' order; ids must match exactly."""
    refs, hyps = read_reports(refs_path), read_reports(hyps_path)
    only_refs, only_hyps = sorted(set(refs) - set(hyps)), sorted(set(hyps) - set(refs))
    if only_refs or only_hyps:
        raise InputError(
            f"ids differ between {refs_path} and {hyps_path}: {len(only_refs)} only in refs "
            f"(e.g. {only_refs[:3]}), {len(only_hyps)} only in hyps (e.g. {only_hyps[:3]})"
        )
    return list(refs.values()), [hyps[key] for key in refs]


def _reports(args: argparse.Namespace) -> dict[str, object]:
    refs, hyps = paired_reports(args.refs, args.hyps)
    if args.protocol == "coco":
        return asdict(coco_scores(refs, hyps))
    scores = medim_scores(refs, hyps)
    out: dict[str, object] = {f"medim_{k}": v for k, v in asdict(scores).items() if k != "unavailable"}
    out["unavailable"] = {f"medim_{k}": v for k, v in scores.unavailable.items()}
    return out


def _images(args: argparse.Namespace) -> dict[str, object]:
    domain = load_domain_classifier(args.domain_classifier) if args.domain_classifier else None
    real, fake = load_png_folder(args.real), load_png_folder(args.fake)
    scores = asdict(image_scores(real, fake, domain=domain, batch_size=args.batch_size))
    if domain is None:
        for key in ("domain_fid", "domain_is_mean", "domain_is_std"):
            del scores[key]
    return scores


def _labels(args: argparse.Namespace) -> dict[str, object]:
    labeler = LABELERS[args.labeler]
    refs, hyps = paired_reports(args.refs, args.hyps)
    scores = label_scores(
        [labeler.extract(r) for r in refs], [labeler.extract(h) for h in hyps], labeler.labels
    )
    out: dict[str, object] = {"labeler": labeler.name, "n": scores.n}
    for kind, prf in (("micro", scores.micro), ("macro", scores.macro)):
        out |= {f"{kind}_precision": prf.precision, f"{kind}_recall": prf.recall, f"{kind}_f1": prf.f1}
    out["per_label"] = {label: asdict(prf) for label, prf in scores.per_label.items()}
    return out


def _train(args: argparse.Namespace) -> dict[str, object]:
    config = DomainTrainConfig(modality=args.modality, steps=args.steps, seed=args.seed)
    result = train_domain_classifier(config)
    save_domain_classifier(result.classifier, args.out)
    return {
        "out": str(args.out),
        "modality": args.modality,
        "steps": args.steps,
        "final_loss": result.losses[-1] if result.losses else None,
        "accuracy": result.accuracy,
    }


def build_parser() -> argparse.ArgumentParser:
    """The ``medim-eval`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="medim-eval", description=__doc__.splitlines()[0] if __doc__ else None
    )
    commands = parser.add_subparsers(dest="command", required=True)
    reports = commands.add_parser("reports", help="BLEU/METEOR/ROUGE-L/CIDEr of generated reports")
    reports.add_argument("--refs", type=Path, required=True)
    reports.add_argument("--hyps", type=Path, required=True)
    reports.add_argument("--protocol", choices=("coco", "medim"), default="coco")
    reports.set_defaults(run=_reports)
    images = commands.add_parser("images", help="FID (and domain FID/IS) of PNG folders")
    images.add_argument("--real", type=Path, required=True)
    images.add_argument("--fake", type=Path, required=True)
    images.add_argument("--domain-classifier", type=Path)
    images.add_argument("--batch-size", type=int, default=16)
    images.set_defaults(run=_images)
    labels = commands.add_parser("labels", help="clinical label precision/recall/F1 of generated reports")
    labels.add_argument("--refs", type=Path, required=True)
    labels.add_argument("--hyps", type=Path, required=True)
    labels.add_argument("--labeler", choices=sorted(LABELERS), default="chexpert-rules")
    labels.set_defaults(run=_labels)
    train = commands.add_parser("train-classifier", help="train our domain classifier on synthetic images")
    train.add_argument("--modality", choices=MODALITIES, required=True)
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--steps", type=int, default=DomainTrainConfig.steps)
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(run=_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and print its JSON result to stdout; errors go to stderr with exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
    except (ValueError, OSError, JavaNotFoundError, InceptionWeightsError) as error:
        print(f"medim-eval {args.command}: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, sort_keys=False))
    return 0
