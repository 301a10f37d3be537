"""``summary.json`` and ``report.html`` of a federated run, built from its final checkpoint and audit log.

summary.json (``schema`` 2)::

    schema, kind="federated", preset, strategy, wall_seconds, config {sim, fl, sites {site: SiteConfig}},
    config_hash, model_bytes (all parameters of the model), trainable_bytes (what a site sends, in fl.transport),
    rounds: [{round, train_loss (weighted mean of the accepted sites' last training loss) | null,
              eval {set: {loss, image, text, n, + generation metrics on rounds that have them}} | null,
              extra {hook metrics}, accepted [site], rejected [{site, reason}], refused [{site, reason}],
              failed [{site, reason}],
              sites {site: {status, weight, reported_examples, capped, norm, bytes, metrics {...}}},
              bytes_up, bytes_down, seconds, phases {send_receive, validate, aggregate, eval},
              update_norm, global_sha256}],     (round 0: initial eval only)
    sites {site: {modalities, num_examples, epsilon, delta, rounds_trained}},
    eval_curves {set: [[round, loss], ...]}, metric_curves {set: {metric: [[round, value], ...]}},
    privacy {site: {epsilon, delta, steps, rounds, refused}}, privacy_curves {site: [[round, epsilon], ...]},
    totals {bytes_up, bytes_down, accepted, rejected, refused, failed},
    final_checkpoint, audit {path, entries, head, ok, problem}

Generation metrics are described in :mod:`server.generation`; the last generations are in ``samples/``.

Non-finite numbers (the epsilon of a site that trained without DP is infinite) are written as null.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from client.config import SiteConfig
from client.protocol import wire_dtype
from medim.model.lora import apply_lora
from medim.pipeline import Workspace
from medim.report import Page, write_json_atomic
from server.app import AUDIT, CHECKPOINTS, SAMPLES, ServerPlan
from server.audit import verify_chain
from server.checkpoint import latest_path, load_state
from simulation.config import SimConfig
from simulation.privacy_report import evidence_section

SCHEMA = 2
STATUSES = ("accepted", "rejected", "refused", "failed")


def finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def _train_loss(sites: list[dict[str, Any]]) -> float | None:
    """Mean of the accepted sites' reported training loss, weighted by their aggregation weight."""
    pairs = [
        (float(s["weight"]), float(s["metrics"]["loss"]))
        for s in sites
        if s["status"] == "accepted" and "loss" in s.get("metrics", {})
    ]
    total = sum(w for w, _ in pairs)
    return sum(w * x for w, x in pairs) / total if total else None


def eval_entry(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    """A GlobalEval's JSON -> {set: {loss, image, text, n, + generation metrics}}."""
    if raw is None:
        return None
    metrics = raw.get("metrics", {})
    return {m: {**loss, **metrics.get(m, {})} for m, loss in raw["losses"].items()}


def round_entry(record: dict[str, Any]) -> dict[str, Any]:
    """One ``rounds`` entry of the summary from one history record of the server state."""
    sites = record.get("sites", [])
    entry: dict[str, Any] = {
        "round": record["round"],
        "train_loss": _train_loss(sites),
        "eval": eval_entry(record.get("eval")),
        "extra": (record.get("eval") or {}).get("extra", {}),
    }
    entry["accepted"] = [s["site"] for s in sites if s["status"] == "accepted"]
    for status in STATUSES[1:]:
        entry[status] = [{"site": s["site"], "reason": s["reason"]} for s in sites if s["status"] == status]
    entry["sites"] = {s["site"]: {k: v for k, v in s.items() if k not in ("site", "reason")} for s in sites}
    for key in ("bytes_up", "bytes_down", "seconds", "update_norm", "global_sha256"):
        entry[key] = record.get(key, 0 if key != "global_sha256" else "")
    entry["phases"] = record.get("phases", {})
    return entry


def site_entries(
    rounds: list[dict[str, Any]], ledger: dict[str, dict[str, float]], sites: dict[str, SiteConfig]
) -> dict[str, dict[str, Any]]:
    """``sites``: each site's modalities, last reported training-set size, privacy spent, rounds trained."""
    out = {}
    for name, cfg in sorted(sites.items()):
        reported = [
            r["sites"][name]["metrics"]["num-examples"]
            for r in rounds
            if r["sites"].get(name, {}).get("status") == "accepted"
        ]
        spent = ledger.get(name, {})
        out[name] = {
            "modalities": cfg.modalities or sorted(Path(p).name for p in cfg.data),
            "num_examples": int(reported[-1]) if reported else 0,
            "epsilon": spent.get("epsilon"),
            "delta": spent.get("delta"),
            "rounds_trained": int(spent.get("rounds", 0)),
        }
    return out


def curves(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """``eval_curves`` (loss per set), ``metric_curves`` (every numeric metric per set) and ``privacy_curves``
    (epsilon per site after each round it answered)."""
    loss: dict[str, list[list[float]]] = {}
    metric: dict[str, dict[str, list[list[float]]]] = {}
    privacy: dict[str, list[list[float]]] = {}
    for r in rounds:
        for name, values in (r["eval"] or {}).items():
            loss.setdefault(name, []).append([r["round"], values["loss"]])
            for key, value in values.items():
                if isinstance(value, float) and key not in ("loss", "n", "samples"):
                    metric.setdefault(name, {}).setdefault(key, []).append([r["round"], value])
        for site, outcome in r["sites"].items():
            epsilon = outcome.get("metrics", {}).get("epsilon")
            if isinstance(epsilon, float) and math.isfinite(epsilon):  # DP off: infinite, no curve
                privacy.setdefault(site, []).append([r["round"], epsilon])
    return {"eval_curves": loss, "metric_curves": metric, "privacy_curves": privacy}


@dataclass(frozen=True)
class ModelSize:
    """Bytes of every parameter of the model (base + LoRA + new modules) and of the trainable set alone."""

    model_bytes: int
    trainable_bytes: int


def model_size(workspace: Path, trainable: dict[str, np.ndarray], transport: str = "float32") -> ModelSize:
    """Sizes of the workspace's base model with LoRA applied and of the trainable state ``trainable`` as it
    travels in ``transport`` (payload bytes, framing excluded)."""
    model = Workspace.load(workspace).load_base()
    apply_lora(model)
    full = sum(p.numel() * p.element_size() for p in model.parameters())
    sent = sum(int(v.size) * wire_dtype(v.dtype, transport).itemsize for v in trainable.values())
    return ModelSize(model_bytes=full, trainable_bytes=sent)


def build_summary(
    out: Path, *, sim: SimConfig | None, plan: ServerPlan, sites: dict[str, SiteConfig], wall_seconds: float
) -> dict[str, Any]:
    """The summary dict (schema in the module docstring) of the run in ``out``; ``sim`` None for a
    deployment (then ``config.sim`` is null and ``preset`` is the workspace's)."""
    final = latest_path(out / CHECKPOINTS)
    if final is None:
        raise FileNotFoundError(f"{out / CHECKPOINTS} has no checkpoint: the federation did not run")
    state = load_state(final)
    rounds = [round_entry(r) for r in state.history]
    chain = verify_chain(out / AUDIT)
    totals: dict[str, int] = {"bytes_up": 0, "bytes_down": 0}
    for r in rounds:
        totals["bytes_up"] += r["bytes_up"]
        totals["bytes_down"] += r["bytes_down"]
        totals["accepted"] = totals.get("accepted", 0) + len(r["accepted"])
        for status in STATUSES[1:]:
            totals[status] = totals.get(status, 0) + len(r[status])
    return finite(
        {
            "schema": SCHEMA,
            "kind": "federated",
            "preset": sim.preset if sim is not None else Workspace.load(plan.workspace).preset,
            "strategy": plan.fl.strategy,
            "wall_seconds": round(wall_seconds, 2),
            "config": {
                "sim": asdict(sim) if sim is not None else None,
                "fl": asdict(plan.fl),
                "sites": {k: asdict(v) for k, v in sites.items()},
            },
            "config_hash": state.config_hash,
            **asdict(model_size(plan.workspace, state.trainable, plan.fl.transport)),
            "rounds": rounds,
            "sites": site_entries(rounds, state.ledger, sites),
            **curves(rounds),
            "privacy": state.ledger,
            "totals": totals,
            "final_checkpoint": str(final),
            "audit": {"path": str(out / AUDIT), **asdict(chain)},
        }
    )


def _series(points: list[list[float]]) -> Sequence[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in points if y is not None]


def _samples_section(page: Page, folder: Path) -> None:
    """The last generations per set: image grid, then each column's reference and generated report."""
    for grid in sorted(folder.glob("*.png")):
        reports = json.loads(grid.with_suffix(".json").read_text())
        page.image(
            f"{grid.stem}: generations of the final model",
            Image.open(grid).convert("RGB"),
            "top: tokenizer reconstruction of the held-out image; bottom: generated from its report "
            "(column k matches row k below)",
        )
        page.table(
            f"{grid.stem}: reports generated from the images",
            [
                (k, ref, gen)
                for k, (ref, gen) in enumerate(zip(reports["references"], reports["reports"], strict=True))
            ],
            ["#", "reference report", "generated from the image"],
        )


def render_report(summary: dict[str, Any], path: Path) -> None:
    """A self-contained page: loss and metric curves, per-round outcomes, privacy spent per site and round,
    communication, and the final generations beside their reports."""
    page = Page(f"medim federated run ({summary['strategy']})")
    page.curves("Global held-out loss per set", {m: _series(p) for m, p in summary["eval_curves"].items()})
    for name in ("label_f1_micro", "label_f1_macro", "chexpert_f1_micro", "bleu4", "rouge_l", "cider"):
        series = {m: _series(c[name]) for m, c in summary["metric_curves"].items() if name in c}
        if series:
            page.curves(f"{name} per set over rounds", series)
    page.curves(
        "Privacy spent: epsilon per site after each round",
        {site: _series(p) for site, p in summary["privacy_curves"].items()},
    )
    sets = sorted(summary["eval_curves"])
    page.table(
        "Rounds",
        [
            [
                r["round"],
                r["train_loss"],
                *[(r["eval"] or {}).get(m, {}).get("loss") for m in sets],
                ", ".join(r["accepted"]),
                "; ".join(f"{x['site']}: {x['reason']}" for x in r["rejected"] + r["refused"] + r["failed"]),
                r["bytes_up"],
                r["seconds"],
            ]
            for r in summary["rounds"]
        ],
        ["round", "train loss", *[f"loss {m}" for m in sets], "accepted", "rejected / refused / failed"]
        + ["bytes up", "s"],
    )
    final = next((r["eval"] for r in reversed(summary["rounds"]) if r["eval"]), None) or {}
    keys = sorted({k for v in final.values() for k in v if k not in ("image", "text")})
    page.table(
        "Final evaluation per held-out set",
        [[m, *[v.get(k) for k in keys]] for m, v in final.items()],
        ["set", *keys],
    )
    page.table(
        "Sites",
        [
            [
                site,
                ", ".join(v["modalities"]),
                v["num_examples"],
                v["epsilon"],
                v["delta"],
                v["rounds_trained"],
            ]
            for site, v in summary["sites"].items()
        ],
        ["site", "modalities", "examples", "epsilon", "delta", "rounds trained"],
    )
    page.table(
        "Run",
        [
            ["wall seconds", summary["wall_seconds"]],
            ["model bytes / trainable bytes", f"{summary['model_bytes']} / {summary['trainable_bytes']}"],
            ["bytes uploaded", summary["totals"]["bytes_up"]],
            ["bytes downloaded", summary["totals"]["bytes_down"]],
            ["final checkpoint", summary["final_checkpoint"]],
            ["audit chain", f"{summary['audit']['entries']} entries, ok={summary['audit']['ok']}"],
            ["config hash", summary["config_hash"]],
        ],
        ["", ""],
    )
    if "privacy_evidence" in summary:
        evidence_section(page, summary["privacy_evidence"])
    _samples_section(page, path.parent / SAMPLES)
    page.write(path)


def write_outputs(
    out: Path, *, sim: SimConfig | None, plan: ServerPlan, sites: dict[str, SiteConfig], wall_seconds: float
) -> Path:
    """Write ``out/summary.json`` and ``out/report.html``; returns the summary path."""
    summary = build_summary(out, sim=sim, plan=plan, sites=sites, wall_seconds=wall_seconds)
    write_json_atomic(out / "summary.json", summary)
    render_report(summary, out / "report.html")
    return out / "summary.json"
