"""Fault plans for ``medim-simulate --faults NAME``: sites that crash, stall or send bad or hostile updates.

Simulation and tests only: a fault plan wraps the *simulated* site's reply construction (the ClientApp built here
around :func:`client.app.handle_train`); no production path knows about it. The coordinator is unchanged, so a
run with a plan shows what a deployment's coordinator does with such replies: reject and audit them, cap them, or
(for a sign flip, which no per-update bound can tell from an honest update) leave them to a robust aggregator.

A plan (``configs/faults/<name>.yaml`` -> :class:`FaultPlan`) lists faults, each for one site in some rounds, and the
scenario it runs in: the sites that join and coordinator settings (``fl``: e.g. a short ``timeout_s``, a tight
``validation.max_update_norm``, a robust ``strategy``). Command-line options win over the plan's.

Fault kinds (``update`` = the site's honest ``w_site - w_global``):

=================== ================================================================================
``crash``           the site's process fails before training (Flower error reply): ``failed``
``killed``          the site's worker process is killed before training (SIGKILL, as by an out-of-memory
                    killer): ``failed``; the simulation gives the next message a fresh worker
``slow``            the site sleeps ``seconds`` before training (past ``fl.timeout_s``: ``failed``)
``nan`` / ``inf``   one value of the first tensor is NaN / +inf
``wrong_shape``     the first tensor gains a row
``extra_key``       the reply also carries a base weight (``backbone.model.embed_tokens.weight``)
``huge_norm``       ``factor`` is added to every value of the first tensor
``sign_flip``       ``w_global - update``
``scale``           ``w_global + factor * update``
``inflate``         ``num-examples`` multiplied by ``factor``
``stale_round``     the reply claims the previous round
=================== ================================================================================
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import yaml
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.app import handle_train, site_config_path
from client.config import load_site_config
from client.protocol import (
    ARRAYS,
    CONFIG,
    METRICS,
    NUM_EXAMPLES,
    TrainInstructions,
    record_to_arrays,
    roll_call_reply,
    to_wire,
)
from medim.config import ConfigError, build_config, check, check_choice, config_dir, presets
from medim.model.transport import TRANSPORT_DTYPES
from server.config import FLConfig

KINDS = (
    "crash",
    "killed",
    "slow",
    "nan",
    "inf",
    "wrong_shape",
    "extra_key",
    "huge_norm",
    "sign_flip",
    "scale",
    "inflate",
    "stale_round",
)
BASE_WEIGHT = "backbone.model.embed_tokens.weight"
Scalar = str | int | float | bool


class SiteCrash(RuntimeError):
    """Raised by a simulated site told to crash; Flower turns it into an error reply."""


@dataclass
class Fault:
    """One fault of one site, in ``rounds`` (empty = every round)."""

    site: str
    kind: str
    rounds: list[int] = field(default_factory=list)
    seconds: float = 0.0
    factor: float = 100.0

    def __post_init__(self) -> None:
        check(bool(self.site), "faults.site", self.site, "a site name")
        check_choice("faults.kind", self.kind, KINDS)
        check(all(r >= 1 for r in self.rounds), "faults.rounds", self.rounds, "rounds >= 1")
        check(self.seconds >= 0, "faults.seconds", self.seconds, ">= 0")
        check(self.kind != "slow" or self.seconds > 0, "faults.seconds", self.seconds, "> 0 for kind slow")
        check(np.isfinite(self.factor) and self.factor > 0, "faults.factor", self.factor, "finite, > 0")

    def applies(self, site: str, server_round: int) -> bool:
        return site == self.site and (not self.rounds or server_round in self.rounds)


@dataclass
class FaultPlan:
    """A fault scenario: the faults, the sites that join (empty = the sim preset's) and coordinator overrides."""

    faults: list[Fault] = field(default_factory=list)
    sites: list[str] = field(default_factory=list)
    fl: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.faults = [Fault(**f) if isinstance(f, dict) else f for f in self.faults]
        unknown = sorted({f.site for f in self.faults} - set(self.sites)) if self.sites else []
        check(not unknown, "faults.sites", self.sites, f"a list naming every faulty site (missing {unknown})")

    def for_site(self, site: str, server_round: int) -> list[Fault]:
        return [f for f in self.faults if f.applies(site, server_round)]


def load_fault_plan(name: str) -> FaultPlan:
    """``configs/faults/<name>.yaml`` as a validated :class:`FaultPlan` (its ``fl`` keys checked against FLConfig)."""
    path = config_dir() / "faults" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"fault plan {name!r} not found in {path.parent}: available {presets('faults')}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict) or not isinstance(raw.get("fl", {}), dict):
        raise ConfigError(f"{path}: expected a mapping with faults, sites and an fl mapping")
    fl = raw.pop("fl", {})
    build_config(FLConfig, fl, where=f"{path}: fl")
    plan = build_config(FaultPlan, raw, where=str(path))
    plan.fl = fl
    return plan


def corrupt(
    content: RecordDict,
    fault: Fault,
    *,
    global_arrays: Mapping[str, np.ndarray],
    transport: str = "float32",
) -> RecordDict:
    """A copy of an honest train reply's content with ``fault`` applied (reply-side kinds only).

    Args:
        content: the site's reply content (``arrays``, ``metrics``, ``site``), arrays in ``transport``.
        global_arrays: the state the site was sent, decoded ({name: float32 array}); ``sign_flip``/``scale``
            act on the update.
        transport: the round's wire dtype: the fault is applied to the decoded values and the result sent in it
            again (a NaN stays a NaN in bfloat16 bits).
    """
    reported = content.get(METRICS)
    metrics: dict[str, Any] = dict(reported.items()) if isinstance(reported, MetricRecord) else {}
    out = RecordDict({k: v for k, v in content.items() if k not in (ARRAYS, METRICS)})
    record = content.get(ARRAYS)
    arrays = record_to_arrays(record, transport) if isinstance(record, ArrayRecord) else {}
    first = next(iter(arrays), None)
    if fault.kind in ("nan", "inf", "wrong_shape", "huge_norm") and first is not None:
        value = arrays[first].copy()
        if fault.kind == "wrong_shape":
            value = np.concatenate([value, value[:1]]) if value.ndim else value.reshape(1)
        elif fault.kind == "huge_norm":
            value += np.asarray(fault.factor, dtype=value.dtype)
        else:
            value.reshape(-1)[0] = np.nan if fault.kind == "nan" else np.inf
        arrays[first] = value
    elif fault.kind == "extra_key" and arrays:
        arrays[BASE_WEIGHT] = np.zeros((8, 8), dtype=np.float32)
    elif fault.kind in ("sign_flip", "scale"):
        scale = -1.0 if fault.kind == "sign_flip" else fault.factor
        arrays = {
            k: (global_arrays[k] + scale * (v - global_arrays[k])).astype(v.dtype)
            if k in global_arrays
            else v
            for k, v in arrays.items()
        }
    elif fault.kind == "inflate":
        metrics[NUM_EXAMPLES] = int(metrics.get(NUM_EXAMPLES, 1)) * int(fault.factor)
    elif fault.kind == "stale_round":
        metrics["server-round"] = int(metrics.get("server-round", 1)) - 1
    out[METRICS] = MetricRecord(metrics)
    if record is not None:
        out[ARRAYS] = _encode(arrays, transport)
    return out


def _encode(arrays: Mapping[str, np.ndarray], transport: str) -> ArrayRecord:
    """Arrays in the wire dtype of ``transport``; unlike a site's encoder no range check (a fault may be inf)."""
    target = TRANSPORT_DTYPES[transport]
    wire = {}
    for k, v in arrays.items():
        value = torch.from_numpy(np.ascontiguousarray(v))
        wire[k] = Array(to_wire(value.to(target) if value.is_floating_point() else value))
    return ArrayRecord(wire)


def faulty_client_app(plan: FaultPlan, defaults: Mapping[str, Scalar]) -> ClientApp:
    """The simulation's ClientApp with ``plan``'s faults injected around the honest train handler."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        site = load_site_config(site_config_path(context, defaults))
        config = msg.content[CONFIG]
        assert isinstance(config, ConfigRecord)
        instructions = TrainInstructions.from_record(config)
        server_round = instructions.server_round
        faults = plan.for_site(site.name, server_round)
        for fault in faults:
            if fault.kind == "crash":
                raise SiteCrash(f"{site.name}: injected crash in round {server_round}")
            if fault.kind == "killed":
                os.kill(os.getpid(), signal.SIGKILL)
            if fault.kind == "slow":
                time.sleep(fault.seconds)
        reply = handle_train(msg, site)
        record = msg.content[ARRAYS]
        assert isinstance(record, ArrayRecord)
        global_arrays = record_to_arrays(record, instructions.transport)
        content = reply.content
        for fault in faults:
            content = corrupt(content, fault, global_arrays=global_arrays, transport=instructions.transport)
        return Message(content, reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        site = load_site_config(site_config_path(context, defaults))
        return Message(roll_call_reply(site.name), reply_to=msg)

    return app
