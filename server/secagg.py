"""Secure aggregation with SecAgg+ (Flower 1.42's legacy path): the coordinator learns only the weighted average
of the sites' trainable states, never one site's update.

``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` over a ``LegacyContext`` with the legacy
``flwr.server.strategy.FedAvg``; sites run :func:`client.secagg.make_secagg_client_app` (``secaggplus_mod``).
Each site clips its arrays to ``[-clipping_range, clipping_range]``, quantizes them to ``quantization_range``
levels, scales them by ``num-examples / max_weight`` and masks them; sites that drop out after sharing their keys
are recovered from ``reconstruction_threshold`` shares. What this configuration gives up (the coordinator sees
only the sum): robust aggregators (median, trimmed mean, Krum), per-update validation (keys, shapes, norms,
finiteness per site), the per-site weight cap, and per-site entries in the audit log.

Outputs: ``OUT/secagg/trainable.safetensors`` (the final global trainable state, float32, by name).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Context
from flwr.common import ndarrays_to_parameters
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from safetensors.numpy import save_file

from medim.config import check, check_positive
from medim.model.lora import apply_lora, trainable_state
from medim.pipeline import Workspace
from server.app import Scalar, ServerPlan
from server.config import FLConfig
from server.loop import round_instructions

MAIN_PARAMS_RECORD = "parameters"  # flwr.server.workflow.constant


@dataclass(frozen=True)
class SecAggConfig:
    """SecAgg+ parameters (see ``flwr.server.workflow.SecAggPlusWorkflow``)."""

    num_shares: int = 3
    reconstruction_threshold: int = 2
    clipping_range: float = 8.0
    quantization_range: int = 2**22
    max_weight: float = 1000.0
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        check(self.num_shares >= 2, "secagg.num_shares", self.num_shares, ">= 2")
        check(
            1 <= self.reconstruction_threshold <= self.num_shares,
            "secagg.reconstruction_threshold",
            self.reconstruction_threshold,
            f"1..num_shares ({self.num_shares})",
        )
        check_positive("secagg.clipping_range", self.clipping_range)
        check(
            2 <= self.quantization_range < 2**32,
            "secagg.quantization_range",
            self.quantization_range,
            "[2, 2**32)",
        )
        check_positive("secagg.max_weight", self.max_weight)
        check_positive("secagg.timeout_s", self.timeout_s)


def fit_config(fl: FLConfig, server_round: int) -> dict[str, int | float]:
    """The round's task (:func:`server.loop.round_instructions`, FedProx's mu included) as the legacy fit
    config: the numeric keys of :class:`TrainInstructions` (SecAgg+ quantizes, so no ``transport``)."""
    record = round_instructions(fl, server_round).to_record()
    return {k: v for k, v in record.items() if isinstance(v, int | float)}


def secure_rounds(grid, context: Context, plan: ServerPlan, cfg: SecAggConfig) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """Run ``plan.fl.rounds`` SecAgg+ rounds from the base model's trainable state; returns the final state."""
    model = Workspace.load(plan.workspace).load_base()
    torch.manual_seed(plan.fl.seed)
    apply_lora(model)
    initial = {k: v.numpy() for k, v in trainable_state(model).items()}
    names, dtypes = list(initial), {k: v.dtype for k, v in initial.items()}
    over = sorted(k for k, v in initial.items() if np.abs(v).max(initial=0.0) > cfg.clipping_range)
    if over:
        raise ValueError(f"trainable tensors {over[:3]} exceed secagg.clipping_range={cfg.clipping_range}")
    sites = len(plan.sites)
    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=sites,
        min_evaluate_clients=0,
        min_available_clients=sites,
        initial_parameters=ndarrays_to_parameters([initial[k] for k in names]),
        on_fit_config_fn=lambda server_round: dict(fit_config(plan.fl, server_round)),
    )
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=plan.fl.rounds), strategy=strategy)
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(
            num_shares=min(cfg.num_shares, sites),
            reconstruction_threshold=min(cfg.reconstruction_threshold, sites),
            clipping_range=cfg.clipping_range,
            quantization_range=cfg.quantization_range,
            max_weight=cfg.max_weight,
            timeout=cfg.timeout_s,
        )
    )
    workflow(grid, legacy)
    arrays = legacy.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()
    final = {
        k: np.asarray(a, dtype=dtypes[k]).reshape(initial[k].shape)
        for k, a in zip(names, arrays, strict=True)
    }
    if not all(math.isfinite(float(np.abs(v).sum())) for v in final.values()):
        raise ValueError("the securely aggregated state is not finite")
    out = plan.out / "secagg"
    out.mkdir(parents=True, exist_ok=True)
    save_file(final, str(out / "trainable.safetensors"))
    return final


def make_secagg_server_app(
    defaults: Mapping[str, Scalar] | None = None, *, secagg: SecAggConfig
) -> ServerApp:
    """A legacy ServerApp running SecAgg+ rounds; run-config keys as :class:`server.app.ServerPlan`."""
    fallback = dict(defaults or {})
    app = ServerApp()

    @app.main()
    def main(grid, context: Context) -> None:  # type: ignore[no-untyped-def]
        secure_rounds(grid, context, ServerPlan.from_run_config({**fallback, **context.run_config}), secagg)

    return app
