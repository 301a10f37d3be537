"""The Flower ServerApp: thin wiring from a run config to :func:`serve`.

Run-config keys (flat scalars, so the same keys work for ``flwr run --run-config`` and in-process simulation):
``out`` (run folder: checkpoints/, audit.jsonl), ``workspace`` (bootstrapped workspace: base model, held-out sets),
``sites`` (comma-separated expected sites), ``fl-preset`` (configs/fl/<name>.yaml), ``fl-overrides`` (a JSON
object of FLConfig fields), ``diffusion`` (diffusion preset), ``resume`` (continue from the latest checkpoint),
``progress`` (print one line per round).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from medim.config import ConfigError, DiffusionConfig, load_preset
from medim.model.lora import trainable_state
from medim.pipeline import Workspace
from server.audit import AuditLog
from server.checkpoint import ServerState, latest_path, load_state, save_state
from server.config import FLConfig
from server.evaluation import EvalHook, build_evaluator
from server.loop import roll_call, run_rounds, state_sha256
from server.strategies import load_strategy_state, make_strategy

Scalar = str | int | float | bool
CHECKPOINTS, AUDIT, SAMPLES = "checkpoints", "audit.jsonl", "samples"


@dataclass
class ServerPlan:
    """A coordinator's run, parsed from the run config (see the module docstring)."""

    out: Path
    workspace: Path
    fl: FLConfig
    sites: list[str]
    diffusion: str = "default"
    resume: bool = False
    progress: bool = True

    @classmethod
    def from_run_config(cls, cfg: Mapping[str, Scalar]) -> ServerPlan:
        for key in ("out", "workspace", "sites"):
            if not str(cfg.get(key, "")):
                raise ConfigError(f"run config {key!r} is missing")
        try:
            overrides = json.loads(str(cfg.get("fl-overrides", "{}")))
        except json.JSONDecodeError as err:
            raise ConfigError(f"run config 'fl-overrides' is not a JSON object: {err}") from None
        if not isinstance(overrides, dict):
            raise ConfigError("run config 'fl-overrides' is not a JSON object")
        return cls(
            out=Path(str(cfg["out"])),
            workspace=Path(str(cfg["workspace"])),
            fl=load_preset(FLConfig, "fl", str(cfg.get("fl-preset", "small")), **overrides),
            sites=[s for s in str(cfg["sites"]).split(",") if s],
            diffusion=str(cfg.get("diffusion", "default")),
            resume=bool(cfg.get("resume", False)),
            progress=bool(cfg.get("progress", True)),
        )

    def config_hash(self) -> str:
        """Hash of what determines the result of every round (not the stopping round, paths or timeouts)."""
        fl = {
            k: v
            for k, v in asdict(self.fl).items()
            if k not in ("rounds", "timeout_s", "connect_timeout_s", "keep_checkpoints", "generation")
        }
        if fl["transport"] == "float32":  # the default leaves the hashes of runs made before the option valid
            del fl["transport"]
        body = json.dumps(
            {"fl": fl, "sites": sorted(self.sites), "diffusion": self.diffusion}, sort_keys=True
        )
        return hashlib.sha256(body.encode()).hexdigest()


def _report(plan: ServerPlan, line: str) -> None:
    if plan.progress:
        print(line, flush=True)


def serve(grid: Grid, plan: ServerPlan, *, hooks: Sequence[EvalHook] = ()) -> ServerState:
    """Run (or resume) the federation described by ``plan`` over ``grid``; returns the final server state."""
    ws = Workspace.load(plan.workspace)
    diffusion = load_preset(DiffusionConfig, "diffusion", plan.diffusion)
    evaluator = build_evaluator(ws, plan.fl, diffusion, hooks=hooks)
    strategy = make_strategy(plan.fl)
    checkpoints, audit = plan.out / CHECKPOINTS, AuditLog(plan.out / AUDIT)
    latest = latest_path(checkpoints)
    if latest is not None and not plan.resume:
        raise FileExistsError(f"{checkpoints} already holds a run: resume it or choose another output folder")
    if latest is not None:
        state = load_state(latest)
        if state.config_hash != plan.config_hash():
            raise ConfigError(
                f"{latest}: the checkpoint was made with a different configuration; cannot resume"
            )
        load_strategy_state(strategy, state.strategy)
        state.restore_rng()
        audit.append("resume", round=state.round, checkpoint=str(latest))
        _report(plan, f"resuming after round {state.round} from {latest}")
    else:
        initial = {k: v.numpy() for k, v in trainable_state(evaluator.model).items()}
        state = ServerState(round=0, trainable=initial, config_hash=plan.config_hash())
        audit.append("start", config_hash=state.config_hash, fl=asdict(plan.fl), sites=plan.sites)
        first = evaluator(0, initial)
        state.history.append({"round": 0, "eval": first.to_json(), "global_sha256": state_sha256(initial)})
        state.audit_head = audit.head
        save_state(checkpoints, state, keep=plan.fl.keep_checkpoints)
        _report(plan, f"round 0  {first.line()}")
    nodes = roll_call(grid, expected=plan.sites, timeout=plan.fl.connect_timeout_s, audit=audit)
    state = run_rounds(
        grid,
        state=state,
        strategy=strategy,
        fl=plan.fl,
        nodes=nodes,
        evaluator=evaluator,
        audit=audit,
        checkpoints=checkpoints,
        report=lambda line: _report(plan, line),
    )
    if evaluator.generation is not None:
        for samples in evaluator.generation.last.values():
            samples.save(plan.out / SAMPLES)
    audit.append("finish", round=state.round, checkpoint=str(latest_path(checkpoints)))
    return state


def make_server_app(
    defaults: Mapping[str, Scalar] | None = None, *, hooks: Sequence[EvalHook] = ()
) -> ServerApp:
    """A ServerApp; ``defaults`` supply run-config keys that the run config does not set."""
    fallback = dict(defaults or {})
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, ServerPlan.from_run_config({**fallback, **context.run_config}), hooks=hooks)

    return app


app = make_server_app()
