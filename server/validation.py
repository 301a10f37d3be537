"""Update validation: every train reply is checked before it can reach the aggregator.

Flower itself checks only that replies have consistent keys; it weights by the client-reported ``num-examples``
without a cap. Here a reply is *accepted* only if it trained for this round, its keys equal the trainable set, every
tensor has the global tensor's shape, the dtype the transport puts on the wire (``fl.transport``, see
:mod:`client.protocol`) and finite values once decoded to float32, the update norm ``||w_site - w_global||_2`` (over
all tensors) and the payload size are within bounds; its weight is ``min(num-examples, max_num_examples)``.
A site that refuses (privacy budget spent) is *refused*, not rejected; a reply carrying a Flower error *failed*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from client.protocol import ARRAYS, METRICS, NUM_EXAMPLES, SITE, from_wire, wire_dtype
from server.config import ValidationConfig

ACCEPTED, REJECTED, REFUSED, FAILED = "accepted", "rejected", "refused", "failed"


@dataclass
class Verdict:
    """The outcome for one reply. ``arrays`` (the site's trainable state) is kept only when accepted."""

    site: str
    status: str
    reason: str = ""
    weight: int = 0
    reported_examples: int = 0
    capped: bool = False
    norm: float = 0.0
    nbytes: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] | None = None  # decoded: the global state's dtypes

    @property
    def accepted(self) -> bool:
        return self.status == ACCEPTED


class Rejection(ValueError):
    """Raised inside validation; its message is the audited reason."""


def check_reply(
    msg: Message,
    *,
    global_arrays: dict[str, np.ndarray],
    server_round: int,
    bounds: ValidationConfig,
    transport: str = "float32",
) -> Verdict:
    """Validate one reply message against the global state [any shapes] the site was sent."""
    if msg.has_error():
        return Verdict(
            site=f"node-{msg.metadata.src_node_id}", status=FAILED, reason=msg.error.reason or "error"
        )
    return check_content(
        msg.content,
        global_arrays=global_arrays,
        server_round=server_round,
        bounds=bounds,
        transport=transport,
    )


def check_content(
    content: RecordDict,
    *,
    global_arrays: dict[str, np.ndarray],
    server_round: int,
    bounds: ValidationConfig,
    transport: str = "float32",
) -> Verdict:
    """Validate one reply's content (see the module docstring); never raises for bad input."""
    site_rec = content.get(SITE)
    site = str(site_rec.get("name", "?")) if isinstance(site_rec, ConfigRecord) else "?"
    verdict = Verdict(site=site, status=REJECTED)
    try:
        metrics = _metrics(content)
        verdict.metrics = metrics
        _check_round(metrics, server_round)
        if metrics.get("refused", 0.0) != 0.0:
            reason = str(site_rec.get("reason", "")) if isinstance(site_rec, ConfigRecord) else ""
            verdict.status, verdict.reason = REFUSED, reason or "site refused"
            return verdict
        record = content.get(ARRAYS)
        if not isinstance(record, ArrayRecord):
            raise Rejection("no ArrayRecord 'arrays' in the reply")
        verdict.nbytes = record.count_bytes()
        if verdict.nbytes > bounds.max_update_bytes:
            raise Rejection(
                f"update size {verdict.nbytes} bytes exceeds fl.validation.max_update_bytes={bounds.max_update_bytes}"
            )
        arrays = _arrays(record, global_arrays, transport)
        verdict.norm = update_norm(arrays, global_arrays)
        if not verdict.norm <= bounds.max_update_norm:
            raise Rejection(
                f"update norm {verdict.norm:.4g} exceeds fl.validation.max_update_norm={bounds.max_update_norm}"
            )
        verdict.reported_examples = _num_examples(metrics)
        verdict.weight = min(verdict.reported_examples, bounds.max_num_examples)
        verdict.capped = verdict.weight < verdict.reported_examples
        verdict.arrays, verdict.status = arrays, ACCEPTED
    except Rejection as err:
        verdict.reason = str(err)
    return verdict


def _metrics(content: RecordDict) -> dict[str, float]:
    record = content.get(METRICS)
    if not isinstance(record, MetricRecord):
        raise Rejection("no MetricRecord 'metrics' in the reply")
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, list | bool):
            raise Rejection(f"metric {key!r} is not a scalar")
        out[key] = float(value)
    return out


def _check_round(metrics: dict[str, float], server_round: int) -> None:
    got = metrics.get("server-round")
    if got != server_round:
        shown = "none" if got is None else f"{got:g}"
        raise Rejection(f"round mismatch: reply is for round {shown}, expected {server_round}")


def _num_examples(metrics: dict[str, float]) -> int:
    value = metrics.get(NUM_EXAMPLES)
    if value is None or not math.isfinite(value) or value != int(value) or value < 1:
        raise Rejection(f"num-examples must be a positive integer, got {value}")
    return int(value)


def _arrays(
    record: ArrayRecord, global_arrays: dict[str, np.ndarray], transport: str
) -> dict[str, np.ndarray]:
    missing, extra = sorted(set(global_arrays) - set(record)), sorted(set(record) - set(global_arrays))
    if missing or extra:
        raise Rejection(
            f"keys differ from the trainable set: missing {missing[:3]} ({len(missing)}), "
            f"unexpected {extra[:3]} ({len(extra)})"
        )
    arrays: dict[str, np.ndarray] = {}
    for key, reference in global_arrays.items():
        try:
            value = record[key].numpy()
        except (TypeError, ValueError, EOFError, OSError) as err:  # np.load of bytes a site chose
            raise Rejection(f"{key}: not a numpy array ({err})") from None
        if not isinstance(value, np.ndarray):  # e.g. an .npz archive: np.load returns an NpzFile
            raise Rejection(f"{key}: not a numpy array (decoded to {type(value).__name__})")
        if value.shape != reference.shape:
            raise Rejection(f"{key}: shape {value.shape} != expected {reference.shape}")
        expected = wire_dtype(reference.dtype, transport)
        if value.dtype != expected:
            raise Rejection(f"{key}: dtype {value.dtype} != expected {expected} (transport {transport})")
        value = from_wire(value, transport).astype(reference.dtype, copy=False)
        if not np.isfinite(value).all():
            raise Rejection(f"{key}: non-finite values")
        arrays[key] = value
    return arrays


def update_norm(arrays: dict[str, np.ndarray], global_arrays: dict[str, np.ndarray]) -> float:
    """L2 norm of the update ``arrays - global_arrays`` over all tensors (float64 accumulation)."""
    total = sum(
        float(np.sum((arrays[k].astype(np.float64) - global_arrays[k].astype(np.float64)) ** 2))
        for k in arrays
    )
    return math.sqrt(total)
