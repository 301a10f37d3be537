"""What travels between the coordinator and a site, in Flower records (the one place both sides agree on).

Train message (coordinator -> site), a ``RecordDict``:
    ``arrays``  ArrayRecord: the global trainable state (keys = the trainable set), in the transport dtype.
    ``config``  ConfigRecord: ``server-round``, ``local-steps``, ``lr``, ``batch-size``, ``warmup-steps``,
                ``seed``, ``proximal-mu``, ``transport``. Only these keys are read (:class:`TrainInstructions`);
                anything else, e.g. a privacy setting, is ignored: a site's privacy settings are its own.

Train reply (site -> coordinator):
    ``arrays``  ArrayRecord: the site's trainable state after local training, in the transport dtype the
                train message named; absent when the site refused.
    ``metrics`` MetricRecord: only the aggregate scalars in :data:`METRIC_KEYS` (plus ``loss-<modality>``).
    ``site``    ConfigRecord: ``name`` (the site's name) and ``reason`` (why it refused, else "").

Query message (roll call): the reply's ``site`` record names the site behind a node.

Transport (``fl.transport``): the floating tensors of both ``arrays`` records travel as ``float32`` (default),
``float16`` or ``bfloat16`` (half the bytes; round-trip error in :mod:`medim.model.transport`). Arrays are numpy
``.npy`` payloads (Flower's ``Array``); numpy has no bfloat16, so bfloat16 travels as its raw 16-bit patterns, a
``uint16`` array (:data:`WIRE_DTYPES`). Both sides decode to float32 at once: sites train in float32, the
coordinator validates and aggregates float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from medim.model.transport import TRANSPORT_DTYPES, encode_state

ARRAYS, CONFIG, METRICS, SITE = "arrays", "config", "metrics", "site"
NUM_EXAMPLES = "num-examples"
METRIC_KEYS = frozenset(
    {
        NUM_EXAMPLES,
        "server-round",
        "steps",
        "refused",
        "epsilon",
        "delta",
        "loss",
        "loss-image",
        "loss-text",
        "seconds",
    }
)
MODALITY_LOSS_PREFIX = "loss-"
TRANSPORTS = tuple(TRANSPORT_DTYPES)
WIRE_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(np.uint16),  # the bfloat16 bit patterns
}


@dataclass(frozen=True)
class TrainInstructions:
    """The per-round task a coordinator may set; parsed from the train message's ConfigRecord."""

    server_round: int
    local_steps: int
    lr: float
    batch_size: int
    warmup_steps: int
    seed: int
    proximal_mu: float = 0.0
    transport: str = "float32"

    def __post_init__(self) -> None:
        check_transport(self.transport)

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(
            {
                "server-round": self.server_round,
                "local-steps": self.local_steps,
                "lr": self.lr,
                "batch-size": self.batch_size,
                "warmup-steps": self.warmup_steps,
                "seed": self.seed,
                "proximal-mu": self.proximal_mu,
                "transport": self.transport,
            }
        )

    @classmethod
    def from_record(cls, record: ConfigRecord) -> TrainInstructions:
        """Read exactly the known keys (missing ones raise KeyError naming the key); ignore everything else."""
        try:
            return cls(
                server_round=int(_scalar(record["server-round"])),
                local_steps=int(_scalar(record["local-steps"])),
                lr=float(_scalar(record["lr"])),
                batch_size=int(_scalar(record["batch-size"])),
                warmup_steps=int(_scalar(record["warmup-steps"])),
                seed=int(_scalar(record["seed"])),
                proximal_mu=float(_scalar(record.get("proximal-mu", 0.0))),
                transport=str(record.get("transport", "float32")),
            )
        except KeyError as err:
            raise KeyError(f"train config lacks {err.args[0]!r}") from None


def _scalar(value: object) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number in the train config, got {type(value).__name__}")
    return value


def check_transport(transport: str) -> None:
    if transport not in TRANSPORTS:
        raise ValueError(f"transport {transport!r} is invalid: allowed {', '.join(TRANSPORTS)}")


def wire_dtype(dtype: np.dtype, transport: str) -> np.dtype:
    """The numpy dtype on the wire of a tensor kept as ``dtype``: floating tensors travel in the transport's."""
    return WIRE_DTYPES[transport] if np.issubdtype(dtype, np.floating) else np.dtype(dtype)


def to_wire(value: torch.Tensor) -> np.ndarray:
    """A tensor already in its transport dtype as the numpy array that travels (bfloat16 as uint16 bits)."""
    value = value.detach().cpu().contiguous()
    if value.dtype == torch.bfloat16:
        return value.view(torch.int16).numpy().view(np.uint16)
    return value.numpy()


def from_wire(value: np.ndarray, transport: str) -> np.ndarray:
    """A received array in float32 (floating transports) or unchanged; bfloat16 bits are widened exactly."""
    check_transport(transport)
    if value.dtype == WIRE_DTYPES[transport]:
        if transport == "bfloat16":
            wide = value.astype(np.uint32)
            wide <<= 16  # in place: 0-d arrays stay arrays
            return wide.view(np.float32)
        return value.astype(np.float32, copy=False)
    return value


def state_to_record(state: dict[str, torch.Tensor], transport: str = "float32") -> ArrayRecord:
    """Trainable state -> ArrayRecord in ``transport`` (numpy serialisation, keys kept in order)."""
    encoded = encode_state(state, transport)
    return ArrayRecord({k: Array(to_wire(v)) for k, v in encoded.items()})


def arrays_to_record(arrays: dict[str, np.ndarray], transport: str = "float32") -> ArrayRecord:
    """The coordinator's numpy state -> ArrayRecord in ``transport`` (0-d arrays stay 0-d)."""
    return state_to_record(
        {k: torch.from_numpy(np.asarray(v, order="C")) for k, v in arrays.items()}, transport
    )


def record_to_arrays(record: ArrayRecord, transport: str = "float32") -> dict[str, np.ndarray]:
    """ArrayRecord -> numpy arrays decoded from ``transport`` (``np.load`` with ``allow_pickle=False`` inside
    Flower's ``Array.numpy``)."""
    return {k: from_wire(v.numpy(), transport) for k, v in record.items()}


def record_to_state(record: ArrayRecord, transport: str = "float32") -> dict[str, torch.Tensor]:
    """ArrayRecord -> trainable state (writable float32 copies)."""
    return {
        k: torch.from_numpy(np.array(v, copy=True)) for k, v in record_to_arrays(record, transport).items()
    }


def train_reply(
    *,
    site: str,
    state: dict[str, torch.Tensor] | None,
    metrics: dict[str, int | float],
    reason: str = "",
    transport: str = "float32",
) -> RecordDict:
    """The reply content of a train message: the update (None when refused) in ``transport``, metrics and the
    site record."""
    unknown = sorted(k for k in metrics if k not in METRIC_KEYS and not k.startswith(MODALITY_LOSS_PREFIX))
    if unknown:
        raise ValueError(f"metrics {unknown} may not leave a site: allowed {sorted(METRIC_KEYS)}")
    content = RecordDict(
        {
            METRICS: MetricRecord({k: v if isinstance(v, int) else float(v) for k, v in metrics.items()}),
            SITE: ConfigRecord({"name": site, "reason": reason}),
        }
    )
    if state is not None:
        content[ARRAYS] = state_to_record(state, transport)
    return content


def roll_call_reply(site: str) -> RecordDict:
    return RecordDict({SITE: ConfigRecord({"name": site, "reason": ""})})
