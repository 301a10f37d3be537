"""`medim-train`: the centralised job. Build the workspace (synthetic hospitals, prepared data, image tokenizer),
train the MeDiM base model centrally on the public pool, evaluate it on the held-out sets, and write
``summary.json`` and ``report.html``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medim.config import ConfigError, DiffusionConfig, SamplerConfig, TrainConfig, load_preset
from medim.evaluate import generate_both_ways, heldout_loss
from medim.metrics.clinical import LABELERS, label_scores
from medim.model.factory import text_tokenizer
from medim.model.medim import MeDiM
from medim.pipeline import Workspace, bootstrap
from medim.report import Page, image_grid, write_json_atomic
from medim.tokenize.vq import VQTokenizer, to_modality


def _to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """[B, C, H, W] in [-1, 1] -> list of uint8 [H, W] (C=1) or [H, W, 3]."""
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [a[..., 0] if a.shape[-1] == 1 else a for a in arr]


def finding_agreement(modality: str, references: list[str], generated: list[str]) -> dict[str, Any]:
    """Label F1 (micro and macro) of reports generated from images against their references' labels, with the
    synthetic-vocabulary labeler of the modality (``medim.metrics.clinical``)."""
    labeler = LABELERS["synthetic-cxr" if modality == "cxr" else "synthetic-pathology"]
    scores = label_scores(
        [labeler.extract(r) for r in references], [labeler.extract(g) for g in generated], labeler.labels
    )
    return {"labeler": labeler.name, "micro_f1": scores.micro.f1, "macro_f1": scores.macro.f1, "n": scores.n}


def evaluate_heldout(
    ws: Workspace,
    model: MeDiM,
    vq: VQTokenizer,
    *,
    diffusion: DiffusionConfig,
    sampler: SamplerConfig,
    samples: int,
    page: Page,
) -> dict[str, Any]:
    """Loss per modality, and report<->image generations for ``samples`` held-out pairs per modality."""
    text = text_tokenizer(model.cfg)
    results: dict[str, Any] = {}
    for modality, folder in sorted(ws.heldout.items()):
        seqs = ws.sequences([folder], model).select(splits=["test", "validate", "train"])
        loss = heldout_loss(model, seqs.x0, diffusion=diffusion)
        picked = seqs.x0[:samples]
        gen = generate_both_ways(model, picked, sampler=sampler)
        refs = [text.decode(model.vocab.text_ids(x)) for x in picked]
        hyps = [text.decode(model.vocab.text_ids(x)) for x in gen.reports_from_images]
        real = _to_uint8(to_modality(vq.decode(model.vocab.image_codes(picked)), modality))
        fake = _to_uint8(to_modality(vq.decode(model.vocab.image_codes(gen.images_from_reports)), modality))
        page.image(
            f"{modality}: report -> image",
            image_grid([real, fake]),
            "top: tokenizer reconstruction of the held-out image; bottom: generated from its report",
        )
        page.table(
            f"{modality}: image -> report",
            [(i, r, h) for i, (r, h) in enumerate(zip(refs, hyps, strict=True))],
            ["#", "reference", "generated from the image"],
        )
        results[modality] = {
            "loss": asdict(loss),
            "report_findings": finding_agreement(modality, refs, hyps),
            "samples": len(picked),
        }
    return results


def train_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medim-train", description=__doc__)
    parser.add_argument("--preset", default="small", help="model/tokenizer/train preset (tiny, small)")
    parser.add_argument("--out", type=Path, default=Path("runs/central"), help="output folder")
    parser.add_argument(
        "--workspace", type=Path, default=None, help="workspace folder (default OUT/workspace)"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="synthetic data scale (default 1.0)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    parser.add_argument("--minutes", type=float, default=None, help="stop training after this many minutes")
    parser.add_argument("--samples", type=int, default=8, help="held-out pairs generated per modality")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        overrides: dict[str, Any] = {"seed": args.seed}
        if args.steps is not None:
            overrides["steps"] = args.steps
        if args.minutes is not None:
            overrides["max_minutes"] = args.minutes
        train = load_preset(TrainConfig, "train", args.preset, **overrides)
        diffusion = load_preset(DiffusionConfig, "diffusion", "default")
        sampler = load_preset(SamplerConfig, "sampler", "default")
    except ConfigError as err:
        print(f"medim-train: {err}", file=sys.stderr)
        return 2
    if train.threads:
        torch.set_num_threads(train.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    root = args.workspace or out / "workspace"
    print(f"medim-train: preset {args.preset}, workspace {root}")
    ws = bootstrap(
        root, preset=args.preset, seed=args.seed, synth_scale=args.scale, pretrain=train, diffusion=diffusion
    )
    model, vq = ws.load_base(), ws.load_vq()
    pretrain = json.loads((ws.base_model / "pretrain.json").read_text())
    gallery = Page("samples")
    heldout = evaluate_heldout(
        ws, model, vq, diffusion=diffusion, sampler=sampler, samples=args.samples, page=gallery
    )
    tokenizer_report = json.loads((ws.tokenizer / "reconstruction.json").read_text())
    page = Page(f"medim centralised run ({args.preset})")
    rows = [(m, r["loss"]["loss"], r["loss"]["image"], r["loss"]["text"]) for m, r in heldout.items()]
    page.table("held-out loss (joint NELBO per token)", rows, ["modality", "loss", "image part", "text part"])
    findings = [(m, json.dumps(r["report_findings"])) for m, r in heldout.items()]
    page.table("findings of reports generated from held-out images", findings, ["modality", "agreement"])
    page.curves("training loss", {"loss": [(h["step"], h["loss"]) for h in pretrain["history"]]})
    page.sections += gallery.sections
    summary = {
        "job": "central",
        "preset": args.preset,
        "seed": args.seed,
        "workspace": str(root),
        "model_checkpoint": str(ws.base_model),
        "train": {k: pretrain[k] for k in ("steps", "seconds", "tokens_per_second")}
        | {"final_loss": pretrain["history"][-1]["loss"] if pretrain["history"] else None},
        "heldout": heldout,
        "tokenizer": tokenizer_report,
        "wall_seconds": time.perf_counter() - started,
    }
    write_json_atomic(out / "summary.json", summary)
    page.write(out / "report.html")
    for modality, r in heldout.items():
        print(
            f"  {modality:<10} held-out loss {r['loss']['loss']:.3f}  report findings {r['report_findings']}"
        )
    print(f"medim-train: wrote {out / 'summary.json'} and {out / 'report.html'}")
    return 0
