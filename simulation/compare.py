"""``medim-simulate compare``: the four baselines on the same workspace, data and evaluation, and one table.

Runs into ``OUT/{central,local,federated,federated-dp}/`` (a part whose summary.json exists is re-used), sharing
``OUT/workspace`` (or ``sim.workspace``): centralised (pooled, no DP), local-only (each site alone, no DP),
federated without DP (``dp=off``) and federated with DP (the sim's privacy preset, ``default`` if that is off).
Writes ``OUT/compare.json``, ``OUT/compare.md`` and ``OUT/report.html``: per model, the final held-out loss
and report label F1 (micro, synthetic labeler) per held-out set, and the largest epsilon any site spent.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from medim.config import load_preset
from medim.privacy import PrivacyConfig
from medim.report import Page, write_json_atomic
from simulation.baselines import run_central, run_local
from simulation.config import SimulateConfig
from simulation.run import SimRequest, simulate

PARTS = ("central", "local", "federated", "federated-dp")


@dataclass
class Row:
    """One model of the table: held-out loss and label F1 per set, epsilon (None without DP)."""

    model: str
    trained_on: list[str]
    loss: dict[str, float | None]
    label_f1: dict[str, float | None]
    epsilon: float | None


def _metric(values: dict[str, Any], key: str) -> float | None:
    value = values.get(key)
    return float(value) if isinstance(value, int | float) else None


def rows_of(part: str, summary: dict[str, Any]) -> list[Row]:
    """The table rows of one part's summary.json."""
    if "models" in summary:
        return [
            Row(
                model=name if part == "central" else f"local {name}",
                trained_on=m["trained_on"],
                loss={s: _metric(v, "loss") for s, v in m["eval"].items()},
                label_f1={s: _metric(v, "label_f1_micro") for s, v in m["eval"].items()},
                epsilon=None,
            )
            for name, m in summary["models"].items()
        ]
    final = next(r["eval"] for r in reversed(summary["rounds"]) if r["eval"])
    spent = [v["epsilon"] for v in summary["sites"].values() if v["epsilon"] is not None]
    dp_on = summary["config"]["sim"]["dp"] != "off"
    return [
        Row(
            model=part,
            trained_on=sorted(summary["sites"]),
            loss={s: _metric(v, "loss") for s, v in final.items()},
            label_f1={s: _metric(v, "label_f1_micro") for s, v in final.items()},
            epsilon=max(spent) if dp_on and spent else None,
        )
    ]


def markdown(rows: list[Row], sets: list[str]) -> str:
    """The table as GitHub markdown."""

    def cell(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    header = [
        "model",
        "trained on",
        *[f"loss {s}" for s in sets],
        *[f"label F1 {s}" for s in sets],
        "epsilon",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        eps = "no DP" if r.epsilon is None else f"{r.epsilon:.2f}"
        cells = [r.model, ", ".join(r.trained_on), *[cell(r.loss.get(s)) for s in sets]]
        lines.append("| " + " | ".join([*cells, *[cell(r.label_f1.get(s)) for s in sets], eps]) + " |")
    return "\n".join(lines) + "\n"


def _parts(cfg: SimulateConfig) -> dict[str, Callable[[], Path]]:
    sim = replace(cfg.sim, workspace=cfg.sim.workspace or str(cfg.out.resolve() / "workspace"))
    base = replace(cfg, sim=sim, resume=False)
    dp = cfg.sim.dp if load_preset(PrivacyConfig, "dp", cfg.sim.dp).enabled else "default"

    def federated(dp_preset: str, folder: str) -> Callable[[], Path]:
        request = SimRequest(
            sim=replace(sim, dp=dp_preset),
            out=cfg.out / folder,
            progress=not cfg.quiet,
            fl_overrides=asdict(cfg.fl),
        )
        return lambda: simulate(request)

    return {
        "central": lambda: run_central(replace(base, baseline="central", out=cfg.out / "central")),
        "local": lambda: run_local(replace(base, baseline="local", out=cfg.out / "local")),
        "federated": federated("off", "federated"),
        "federated-dp": federated(dp, "federated-dp"),
    }


def run_compare(cfg: SimulateConfig) -> Path:
    """Run (or re-use) the four parts into ``cfg.out`` and write the table; returns ``compare.json``."""
    rows: list[Row] = []
    for part, run in _parts(cfg).items():
        path = cfg.out / part / "summary.json"
        if not path.is_file():
            path = run()
        rows += rows_of(part, json.loads(path.read_text()))
    sets = sorted({s for r in rows for s in r.loss})
    table = markdown(rows, sets)
    payload = {
        "preset": cfg.sim.preset,
        "sets": sets,
        "config": cfg.describe(),
        "rows": [asdict(r) for r in rows],
    }
    write_json_atomic(cfg.out / "compare.json", payload)
    (cfg.out / "compare.md").write_text(table)
    page = Page(f"medim baselines compared ({cfg.sim.preset})")
    page.table(
        "Final held-out loss and report label F1 (micro) per set",
        [
            [r.model, ", ".join(r.trained_on), *[r.loss.get(s) for s in sets]]
            + [*[r.label_f1.get(s) for s in sets], r.epsilon]
            for r in rows
        ],
        ["model", "trained on", *[f"loss {s}" for s in sets], *[f"label F1 {s}" for s in sets], "epsilon"],
    )
    page.write(cfg.out / "report.html")
    if not cfg.quiet:
        print(table, flush=True)
    return cfg.out / "compare.json"
