"""Markdown tables of the experiments' results, and writing ``results.json`` + ``results.md``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats rounded, None as ``n/a``."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def pct(value: float | None) -> str:
    """A relative change as a signed percentage (``n/a`` when None)."""
    return "n/a" if value is None else f"{100 * value:+.1f}%"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def settings_line(results: dict[str, Any]) -> str:
    """One line naming what determines the numbers."""
    s = results["settings"]
    return (
        f"preset `{s['preset']}`, {s['steps']} training steps, seed {s['seed']}, synthetic scale {s['scale']}, "
        f"sampler steps {results['configs']['sampler']['steps']}, {s['samples']} held-out pairs generated per "
        "modality"
    )


def ablation_markdown(results: dict[str, Any]) -> str:
    """The ablation table: one row per (variant, modality)."""
    headers = [
        "variant",
        "modality",
        "held-out loss",
        "image part",
        "text part",
        "report F1 micro",
        "report F1 macro",
        "domain FID",
        "finding acc.",
        "finding exact",
    ]
    rows = []
    for name, variant in results["variants"].items():
        for modality, r in variant["heldout"].items():
            loss, i2r, r2i = r["loss"], r["image_to_report"], r["report_to_image"]
            rows.append(
                [
                    name,
                    modality,
                    fmt(loss["loss"]),
                    fmt(loss["image"]),
                    fmt(loss["text"]),
                    fmt(i2r["micro_f1"]),
                    fmt(i2r["macro_f1"]),
                    fmt(r2i["domain_fid"], 2),
                    fmt(r2i["finding_accuracy"]),
                    fmt(r2i["finding_exact_match"]),
                ]
            )
    train_rows = [
        [
            name,
            v["description"],
            fmt(v["train"]["parameters"]),
            fmt(v["train"]["final_loss"]),
            fmt(v["train"]["seconds"], 0),
        ]
        for name, v in results["variants"].items()
    ]
    ceiling = [
        [
            m,
            fmt(r["report_to_image"]["reference_finding_accuracy"]),
            fmt(r["report_to_image"]["reference_finding_exact_match"]),
        ]
        for m, r in next(iter(results["variants"].values()))["heldout"].items()
    ]
    classifiers = ", ".join(
        f"{m}: accuracy {fmt(c['accuracy_on_synthetic_draws'])} on fresh synthetic draws"
        for m, c in results["classifiers"].items()
    )
    return "\n\n".join(
        [
            "# Ablation (synthetic benchmark)",
            f"Command: `{results['command']}`",
            settings_line(results) + f"; {results['data']['train_sequences']} training sequences.",
            markdown_table(headers, rows),
            markdown_table(
                ["variant", "what", "parameters", "final train loss", "train seconds"], train_rows
            ),
            "Finding accuracy of the held-out images' tokenizer reconstructions (the ceiling of this measurement):",
            markdown_table(["modality", "finding acc.", "finding exact"], ceiling),
            f"Domain classifiers (ours): {classifiers}. Domain FID is measured in their feature space against the "
            "tokenizer reconstructions of the same held-out images; it is not comparable to published FIDs.",
        ]
    )


def downstream_markdown(results: dict[str, Any]) -> str:
    """The downstream table: both arms' metrics and the relative change, per modality."""
    headers = ["modality", "metric", "real", "real+generated", "relative change"]
    rows = []
    arms = results["arms"]
    protocol = "?"
    for modality, change in results["change"].items():
        real, aug = arms["real"]["heldout"][modality], arms["real+generated"]["heldout"][modality]
        protocol = real["text"]["protocol"]
        for metric, value in change["relative_change"].items():
            section, key = (
                ("clinical", metric.removeprefix("clinical_"))
                if metric.startswith("clinical_")
                else ("text", metric)
            )
            rows.append([modality, metric, fmt(real[section][key]), fmt(aug[section][key]), pct(value)])
    data = results["data"]
    return "\n\n".join(
        [
            "# Downstream: report generation with generated pairs (synthetic benchmark)",
            f"Command: `{results['command']}`",
            settings_line(results)
            + f"; {data['real_pairs']} real + {data['generated_pairs']} generated pairs "
            f"({data['generated_empty_reports']} generated reports empty).",
            f"Report generator: {results['report_generator']}. Pairs generated by {results['pair_generator']}. "
            f"Text metrics: `{protocol}` protocol; clinical F1: synthetic labelers.",
            markdown_table(headers, rows),
        ]
    )


def write_results(out: Path, results: dict[str, Any], markdown: str) -> None:
    """``out/results.json`` and ``out/results.md``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown + "\n")
