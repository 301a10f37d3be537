"""``medim-generate``: sample reports, images and image-report pairs from any MeDiM checkpoint.

::

    medim-generate report-to-image --model DIR --tokenizer VQ_DIR --out OUT (--reports FILE.jsonl | --text "...")
    medim-generate image-to-report --model DIR --tokenizer VQ_DIR --out OUT --images PATH [PATH ...]
    medim-generate pairs           --model DIR --tokenizer VQ_DIR --out OUT --n N [--prompt "..." ...]

Common options: ``--adapter PATH`` (trainable state: file, round folder, adapter folder; see
:mod:`medim.generate_model`), ``--merge`` (fold LoRA into the weights first), ``--sampler PRESET`` with
``--steps``/``--cfg``/``--temperature``/``--confidence-noise`` overrides, ``--seed``, ``--batch-size``,
``--modality``. Outputs: ``OUT/images/<id>.png``, ``OUT/generations.jsonl`` (one object per sample) and
``OUT/run.json`` (model, adapter, settings). Bad inputs or settings exit with status 2 and a message naming them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medim.config import ConfigError, SamplerConfig, load_preset
from medim.generate_inputs import find_images, read_reports, text_reports
from medim.generate_model import GenerateError, LoadedModel, load_matching_tokenizer, load_model
from medim.generate_tasks import (
    TASKS,
    Item,
    RunSettings,
    generate_items,
    image_items,
    pair_items,
    report_items,
)
from medim.model.factory import text_tokenizer
from medim.model.medim import MeDiM
from medim.tokenize.text import TextTokenizer
from medim.tokenize.vq import MODALITIES, VQTokenizer

JSONL = "generations.jsonl"
RUN_FILE = "run.json"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="medim checkpoint folder (base or LoRA)")
    parser.add_argument(
        "--adapter",
        type=Path,
        help="trainable state: .safetensors file, federated round folder or checkpoint root, adapter folder",
    )
    parser.add_argument(
        "--merge", action="store_true", help="fold LoRA into the base weights before sampling"
    )
    parser.add_argument("--tokenizer", type=Path, required=True, help="VQ image tokenizer folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--sampler", default="default", help="sampler preset in configs/sampler/")
    parser.add_argument("--steps", type=int, help="sampling steps (overrides the preset)")
    parser.add_argument("--cfg", type=float, help="classifier-free guidance scale (overrides the preset)")
    parser.add_argument("--temperature", type=float, help="sampling temperature (overrides the preset)")
    parser.add_argument(
        "--confidence-noise", type=float, help="Gumbel confidence noise (overrides the preset)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per sampler call (default 8)")
    parser.add_argument(
        "--modality",
        choices=MODALITIES,
        help="cxr (grayscale) or pathology (RGB): input preprocessing for image-to-report (inferred when "
        "omitted), how generated images are saved for the other tasks (RGB as decoded when omitted)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the outputs of an earlier run in --out"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medim-generate",
        description="Sample reports, images and image-report pairs from a MeDiM checkpoint.",
    )
    tasks = parser.add_subparsers(dest="task", required=True, metavar="{" + ",".join(TASKS) + "}")
    r2i = tasks.add_parser("report-to-image", help="images from reports")
    _common(r2i)
    source = r2i.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--reports", type=Path, help="JSONL file, one {'id', 'report'[, 'modality']} per line"
    )
    source.add_argument("--text", action="append", help="a report (repeat for several)")
    i2r = tasks.add_parser("image-to-report", help="reports from image files")
    _common(i2r)
    i2r.add_argument("--images", type=Path, nargs="+", required=True, help="DICOM/PNG/JPG files or folders")
    pairs = tasks.add_parser("pairs", help="image-report pairs, unconditional or from report prompts")
    _common(pairs)
    pairs.add_argument("--n", type=int, required=True, help="pairs to generate (per prompt with --prompt)")
    pairs.add_argument("--prompt", action="append", default=[], help="report prefix (repeat for several)")
    return parser


def sampler_settings(args: argparse.Namespace) -> SamplerConfig:
    """The sampler preset with the command-line overrides (validated; ConfigError names a bad value)."""
    overrides = {
        key: value
        for key in ("steps", "cfg", "temperature", "confidence_noise")
        if (value := getattr(args, key)) is not None
    }
    return load_preset(SamplerConfig, "sampler", args.sampler, **overrides)


def _check_numbers(args: argparse.Namespace) -> None:
    if args.batch_size <= 0:
        raise GenerateError(f"--batch-size={args.batch_size} is invalid: allowed > 0")
    if args.seed < 0:
        raise GenerateError(f"--seed={args.seed} is invalid: allowed >= 0")
    if args.task == "pairs":
        if args.n <= 0:
            raise GenerateError(f"--n={args.n} is invalid: allowed > 0")
        for i, prompt in enumerate(args.prompt):
            if not prompt.strip():
                raise GenerateError(f"--prompt #{i + 1}: empty prompt")


def build_items(args: argparse.Namespace, model: MeDiM, vq: VQTokenizer, text: TextTokenizer) -> list[Item]:
    """The samples the task asks for, from its inputs."""
    if args.task == "report-to-image":
        if args.reports:
            reports = read_reports(args.reports, default_modality=args.modality)
        else:
            reports = text_reports(args.text, args.modality)
        return report_items(reports, model, text)
    if args.task == "image-to-report":
        files = find_images(args.images)
        return image_items(files, model, vq, modality=args.modality, batch_size=args.batch_size)
    return pair_items(args.n, args.prompt, model, text, modality=args.modality)


def _prepare_out(out: Path, overwrite: bool) -> None:
    if (out / JSONL).exists() and not overwrite:
        raise GenerateError(f"--out {out}: already holds {JSONL}; choose another folder or pass --overwrite")
    if overwrite:
        shutil.rmtree(out / "images", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def _inputs_summary(args: argparse.Namespace) -> dict[str, Any]:
    if args.task == "report-to-image":
        return {"reports": str(args.reports.resolve())} if args.reports else {"text": args.text}
    if args.task == "image-to-report":
        return {"images": [str(p.resolve()) for p in args.images]}
    return {"n": args.n, "prompts": args.prompt}


def run_record(
    args: argparse.Namespace, argv: list[str], loaded: LoadedModel, sampler: SamplerConfig
) -> dict[str, Any]:
    """The ``run.json`` content: what was loaded and with which settings."""
    adapter = loaded.adapter
    return {
        "task": args.task,
        "model": str(args.model.resolve()),
        "adapter": None if adapter is None else {"kind": adapter.kind, "path": str(adapter.path.resolve())},
        "lora": loaded.lora,
        "merged": loaded.merged_layers > 0,
        "merged_layers": loaded.merged_layers,
        "tokenizer": str(args.tokenizer.resolve()),
        "sampler": asdict(sampler),
        "sampler_preset": args.sampler,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "modality": args.modality,
        "inputs": _inputs_summary(args),
        "command": ["medim-generate", *argv],
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _write_run(out: Path, record: dict[str, Any]) -> None:
    tmp = out / (RUN_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(out / RUN_FILE)


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Load, generate and write every output; returns the final ``run.json`` content."""
    _check_numbers(args)
    sampler = sampler_settings(args)
    loaded = load_model(args.model, adapter=args.adapter, merge=args.merge)
    vq = load_matching_tokenizer(args.tokenizer, loaded.model)
    text = text_tokenizer(loaded.model.cfg)
    items = build_items(args, loaded.model, vq, text)
    _prepare_out(args.out, args.overwrite)
    record = run_record(args, argv, loaded, sampler) | {"status": "running", "samples": 0}
    _write_run(args.out, record)
    settings = RunSettings(
        sampler=sampler,
        seed=args.seed,
        batch_size=args.batch_size,
        out=args.out,
        progress=False if args.no_progress else None,
    )
    with (args.out / JSONL).open("w", encoding="utf-8") as jsonl:
        done = generate_items(items, loaded.model, vq, text, settings, jsonl)
    record |= {
        "status": "finished",
        "samples": done,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_run(args.out, record)
    return record


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        record = run(args, argv)
    except (GenerateError, ConfigError) as err:
        print(f"medim-generate: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {record['samples']} samples to {args.out / JSONL}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
