"""The coordinator's round loop over a Flower ``Grid``: roll call, sampling, train messages, validation,
aggregation, privacy ledger, global evaluation, audit and an atomic checkpoint after every round.

Each finished round appends one JSON-able record to ``ServerState.history``::

    {"round", "sampled": [site], "sites": [{site, status, reason, weight, reported_examples, capped, norm,
     bytes, metrics}], "bytes_up", "bytes_down", "seconds", "phases", "update_norm", "global_sha256",
     "eval": GlobalEval|None}

``seconds`` is the coordinator's wall time of the round (train messages out to evaluation done; the checkpoint is
written after it); ``phases`` splits it: ``send_receive`` (messages out until every reply is in: the sites' work,
scheduling and serialisation), ``validate``, ``aggregate`` and ``eval`` seconds.

Round 0 (before training) holds only the initial evaluation.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from client.protocol import ARRAYS, CONFIG, SITE, TrainInstructions, arrays_to_record
from server.audit import AuditLog
from server.checkpoint import ServerState, save_state
from server.config import FLConfig
from server.evaluation import Evaluator
from server.strategies import aggregate, strategy_state
from server.validation import ACCEPTED, FAILED, REFUSED, REJECTED, Verdict, check_reply, update_norm

Report = Callable[[str], None]


def state_sha256(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of a state, in name order."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}|{value.dtype}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def sample_sites(
    sites: list[str], *, fraction: float, minimum: int, seed: int, server_round: int
) -> list[str]:
    """The sites asked to train this round: a seeded draw of ``max(minimum, ceil(fraction * n))``, sorted."""
    count = min(len(sites), max(minimum, math.ceil(fraction * len(sites))))
    return sorted(random.Random(f"{seed}/{server_round}").sample(sorted(sites), count))


def roll_call(grid: Grid, *, expected: list[str], timeout: float, audit: AuditLog) -> dict[str, int]:
    """Wait for the nodes, ask each which site it is; returns {site: node id} for the expected sites."""
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < len(expected):
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {len(expected)} sites connected within {timeout}s")
        time.sleep(0.5)
    queries = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    found: dict[str, int] = {}
    for reply in grid.send_and_receive(queries, timeout=timeout):
        node = reply.metadata.src_node_id
        record = None if reply.has_error() else reply.content.get(SITE)
        name = str(record.get("name", "")) if isinstance(record, ConfigRecord) else ""
        if name in expected and name not in found:
            found[name] = node
        else:
            audit.append(
                "roll_call_ignored", node=node, site=name, reason="unexpected, duplicate or no answer"
            )
    missing = sorted(set(expected) - set(found))
    audit.append("roll_call", sites=sorted(found), missing=missing)
    if not found:
        raise RuntimeError(f"no expected site answered the roll call (expected {expected})")
    return found


def _record_of(verdict: Verdict) -> dict[str, Any]:
    return {k: v for k, v in asdict(verdict).items() if k != "arrays"}


def _update_ledger(ledger: dict[str, dict[str, float]], verdict: Verdict) -> None:
    if verdict.status not in (ACCEPTED, REFUSED):
        return
    entry = ledger.setdefault(
        verdict.site, {"epsilon": 0.0, "delta": 0.0, "steps": 0.0, "rounds": 0.0, "refused": 0.0}
    )
    for key in ("epsilon", "delta"):
        if key in verdict.metrics:
            entry[key] = verdict.metrics[key]
    entry["steps"] += verdict.metrics.get("steps", 0.0) if verdict.status == ACCEPTED else 0.0
    entry["rounds" if verdict.status == ACCEPTED else "refused"] += 1


def round_instructions(fl: FLConfig, server_round: int) -> TrainInstructions:
    """What every sampled site is asked to do in ``server_round`` (FedProx's mu only under ``fedprox``)."""
    return TrainInstructions(
        server_round=server_round,
        local_steps=fl.local_steps,
        lr=fl.lr,
        batch_size=fl.batch_size,
        warmup_steps=fl.warmup_steps,
        seed=fl.seed,
        proximal_mu=fl.proximal_mu if fl.strategy == "fedprox" else 0.0,
        transport=fl.transport,
    )


def train_round(
    grid: Grid,
    *,
    state: ServerState,
    strategy: Strategy,
    fl: FLConfig,
    nodes: dict[str, int],
    server_round: int,
    audit: AuditLog,
) -> dict[str, Any]:
    """Run one training round and update ``state.trainable``/``state.ledger``; returns the round record."""
    sampled = sample_sites(
        list(nodes), fraction=fl.fraction, minimum=fl.min_sites, seed=fl.seed, server_round=server_round
    )
    audit.append(
        "round_start", round=server_round, sampled=sampled, global_sha256=state_sha256(state.trainable)
    )
    instructions = round_instructions(fl, server_round)
    arrays = arrays_to_record(state.trainable, fl.transport)
    messages = [
        Message(
            RecordDict({ARRAYS: arrays, CONFIG: instructions.to_record()}),
            dst_node_id=nodes[site],
            message_type=MessageType.TRAIN,
        )
        for site in sampled
    ]
    site_of = {nodes[s]: s for s in sampled}
    verdicts: list[Verdict] = []
    clock = time.perf_counter()
    replies = list(grid.send_and_receive(messages, timeout=fl.timeout_s))
    phases = {"send_receive": time.perf_counter() - clock}
    clock = time.perf_counter()
    for reply in replies:
        expected = site_of.get(reply.metadata.src_node_id, "?")
        verdict = check_reply(
            reply,
            global_arrays=state.trainable,
            server_round=server_round,
            bounds=fl.validation,
            transport=fl.transport,
        )
        if verdict.status == FAILED:
            verdict.site = expected
        elif verdict.site != expected:
            verdict = Verdict(
                site=expected,
                status=REJECTED,
                reason=f"reply names site {verdict.site!r}, sent to {expected!r}",
            )
        verdicts.append(verdict)
    answered = {v.site for v in verdicts}
    verdicts += [
        Verdict(site=s, status=FAILED, reason="no reply before the timeout")
        for s in sampled
        if s not in answered
    ]
    verdicts.sort(key=lambda v: v.site)
    for verdict in verdicts:
        audit.append(
            verdict.status,
            round=server_round,
            **{k: v for k, v in _record_of(verdict).items() if k != "metrics"},
        )
        _update_ledger(state.ledger, verdict)
    phases["validate"] = time.perf_counter() - clock
    clock = time.perf_counter()
    accepted = [v for v in verdicts if v.accepted]
    new = aggregate(strategy, server_round, accepted, global_arrays=state.trainable)
    change = 0.0
    if new is not None:
        change = update_norm(new, state.trainable)
        state.trainable = new
    state.strategy = strategy_state(strategy)
    phases["aggregate"] = time.perf_counter() - clock
    return {
        "round": server_round,
        "sampled": sampled,
        "sites": [_record_of(v) for v in verdicts],
        "bytes_up": sum(v.nbytes for v in verdicts),
        "bytes_down": arrays.count_bytes() * len(sampled),
        "seconds": 0.0,
        "phases": phases,
        "update_norm": change,
        "global_sha256": state_sha256(state.trainable),
        "eval": None,
    }


def run_rounds(
    grid: Grid,
    *,
    state: ServerState,
    strategy: Strategy,
    fl: FLConfig,
    nodes: dict[str, int],
    evaluator: Evaluator,
    audit: AuditLog,
    checkpoints: Path,
    report: Report,
) -> ServerState:
    """Rounds ``state.round + 1 .. fl.rounds``, checkpointing into the folder ``checkpoints`` after each."""
    for server_round in range(state.round + 1, fl.rounds + 1):
        start = time.perf_counter()
        record = train_round(
            grid, state=state, strategy=strategy, fl=fl, nodes=nodes, server_round=server_round, audit=audit
        )
        line = progress_line(record, fl.rounds)
        if server_round % fl.eval_every == 0 or server_round == fl.rounds:
            clock = time.perf_counter()
            result = evaluator(server_round, state.trainable)
            record["eval"], line = result.to_json(), f"{line}  {result.line()}"
            record["phases"]["eval"] = time.perf_counter() - clock
        record["phases"] = {k: round(v, 4) for k, v in record["phases"].items()}
        record["seconds"] = round(time.perf_counter() - start, 3)
        state.history.append(record)
        state.round = server_round
        audit.append("round_end", round=server_round, global_sha256=record["global_sha256"])
        state.audit_head = audit.head
        state.capture_rng()
        save_state(checkpoints, state, keep=fl.keep_checkpoints)
        report(f"{line}  {record['seconds']:.1f}s")
    return state


def progress_line(record: dict[str, Any], rounds: int) -> str:
    """``round 2/4  accepted 3 refused 1``: the outcomes of a round record."""
    statuses = (ACCEPTED, REJECTED, REFUSED, FAILED)
    counts = {s: sum(1 for x in record["sites"] if x["status"] == s) for s in statuses}
    outcome = " ".join(f"{k} {v}" for k, v in counts.items() if v or k == ACCEPTED)
    return f"round {record['round']}/{rounds}  {outcome}"
