"""``summary.json`` and ``report.html`` of a federated run, built from its final checkpoint and audit log.

summary.json (``schema`` 1)::

    schema, kind="federated", wall_seconds, config {sim, fl, sites {site: SiteConfig}}, config_hash,
    rounds: [{round, eval {modality: {loss, image, text, n}} | null, accepted [site],
              rejected [{site, reason}], refused [{site, reason}], failed [{site, reason}],
              sites {site: {status, weight, reported_examples, capped, norm, bytes, metrics {...}}},
              bytes_up, bytes_down, seconds, update_norm, global_sha256}],     (round 0: initial eval only)
    eval_curves {modality: [[round, loss], ...]},
    privacy {site: {epsilon, delta, steps, rounds, refused}},
    totals {bytes_up, bytes_down, accepted, rejected, refused, failed},
    final_checkpoint, audit {path, entries, head, ok, problem}

Non-finite numbers (the epsilon of a site that trained without DP is infinite) are written as null.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from client.config import SiteConfig
from medim.report import Page, write_json_atomic
from server.app import AUDIT, CHECKPOINTS, ServerPlan
from server.audit import verify_chain
from server.checkpoint import latest_path, load_state
from simulation.config import SimConfig

SCHEMA = 1
STATUSES = ("accepted", "rejected", "refused", "failed")


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _round_entry(record: dict[str, Any]) -> dict[str, Any]:
    sites = record.get("sites", [])
    entry: dict[str, Any] = {"round": record["round"], "eval": record.get("eval")}
    entry["accepted"] = [s["site"] for s in sites if s["status"] == "accepted"]
    for status in STATUSES[1:]:
        entry[status] = [{"site": s["site"], "reason": s["reason"]} for s in sites if s["status"] == status]
    entry["sites"] = {s["site"]: {k: v for k, v in s.items() if k not in ("site", "reason")} for s in sites}
    for key in ("bytes_up", "bytes_down", "seconds", "update_norm", "global_sha256"):
        entry[key] = record.get(key, 0 if key != "global_sha256" else "")
    return entry


def build_summary(
    out: Path, *, sim: SimConfig, plan: ServerPlan, sites: dict[str, SiteConfig], wall_seconds: float
) -> dict[str, Any]:
    """The summary dict (schema in the module docstring) of the run in ``out``."""
    final = latest_path(out / CHECKPOINTS)
    if final is None:
        raise FileNotFoundError(f"{out / CHECKPOINTS} has no checkpoint: the federation did not run")
    state = load_state(final)
    rounds = [_round_entry(r) for r in state.history]
    curves: dict[str, list[list[float]]] = {}
    for r in rounds:
        for modality, loss in (r["eval"] or {}).get("losses", {}).items():
            curves.setdefault(modality, []).append([r["round"], loss["loss"]])
    chain = verify_chain(out / AUDIT)
    totals: dict[str, int] = {"bytes_up": 0, "bytes_down": 0}
    for r in rounds:
        totals["bytes_up"] += r["bytes_up"]
        totals["bytes_down"] += r["bytes_down"]
        totals["accepted"] = totals.get("accepted", 0) + len(r["accepted"])
        for status in STATUSES[1:]:
            totals[status] = totals.get(status, 0) + len(r[status])
    return _finite(
        {
            "schema": SCHEMA,
            "kind": "federated",
            "wall_seconds": round(wall_seconds, 2),
            "config": {
                "sim": asdict(sim),
                "fl": asdict(plan.fl),
                "sites": {k: asdict(v) for k, v in sites.items()},
            },
            "config_hash": state.config_hash,
            "rounds": rounds,
            "eval_curves": curves,
            "privacy": state.ledger,
            "totals": totals,
            "final_checkpoint": str(final),
            "audit": {"path": str(out / AUDIT), **asdict(chain)},
        }
    )


def render_report(summary: dict[str, Any], path: Path) -> None:
    """A self-contained page: global loss curves, per-round outcomes, privacy spent, communication."""
    page = Page(f"medim federated run ({summary['config']['fl']['strategy']})")
    page.curves(
        "Global held-out loss per modality",
        {m: [(float(x), float(y)) for x, y in pts] for m, pts in summary["eval_curves"].items()},
    )
    modalities = sorted(summary["eval_curves"])
    page.table(
        "Rounds",
        [
            [
                r["round"],
                *[
                    f"{(r['eval'] or {}).get('losses', {}).get(m, {}).get('loss', float('nan')):.4f}"
                    for m in modalities
                ],
                ", ".join(r["accepted"]),
                "; ".join(f"{x['site']}: {x['reason']}" for x in r["rejected"] + r["refused"] + r["failed"]),
                r["bytes_up"],
                r["seconds"],
            ]
            for r in summary["rounds"]
        ],
        [
            "round",
            *[f"loss {m}" for m in modalities],
            "accepted",
            "rejected / refused / failed",
            "bytes up",
            "s",
        ],
    )
    page.table(
        "Privacy spent per site",
        [
            [site, v.get("epsilon"), v.get("delta"), v.get("steps"), v.get("rounds"), v.get("refused")]
            for site, v in sorted(summary["privacy"].items())
        ],
        ["site", "epsilon", "delta", "steps", "rounds trained", "rounds refused"],
    )
    page.table(
        "Run",
        [
            ["wall seconds", summary["wall_seconds"]],
            ["bytes uploaded", summary["totals"]["bytes_up"]],
            ["bytes downloaded", summary["totals"]["bytes_down"]],
            ["final checkpoint", summary["final_checkpoint"]],
            ["audit chain", f"{summary['audit']['entries']} entries, ok={summary['audit']['ok']}"],
            ["config hash", summary["config_hash"]],
        ],
        ["", ""],
    )
    page.write(path)


def write_outputs(
    out: Path, *, sim: SimConfig, plan: ServerPlan, sites: dict[str, SiteConfig], wall_seconds: float
) -> Path:
    """Write ``out/summary.json`` and ``out/report.html``; returns the summary path."""
    summary = build_summary(out, sim=sim, plan=plan, sites=sites, wall_seconds=wall_seconds)
    write_json_atomic(out / "summary.json", summary)
    render_report(summary, out / "report.html")
    return out / "summary.json"
