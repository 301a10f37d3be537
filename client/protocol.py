"""What travels between the coordinator and a site, in Flower records (the one place both sides agree on).

Train message (coordinator -> site), a ``RecordDict``:
    ``arrays``  ArrayRecord: the global trainable state (keys = the trainable set).
    ``config``  ConfigRecord: ``server-round``, ``local-steps``, ``lr``, ``batch-size``, ``warmup-steps``,
                ``seed``, ``proximal-mu``. Only these keys are read (:class:`TrainInstructions`); anything
                else, e.g. a privacy setting, is ignored: a site's privacy settings are its own.

Train reply (site -> coordinator):
    ``arrays``  ArrayRecord: the site's trainable state after local training; absent when the site refused.
    ``metrics`` MetricRecord: only the aggregate scalars in :data:`METRIC_KEYS` (plus ``loss-<modality>``).
    ``site``    ConfigRecord: ``name`` (the site's name) and ``reason`` (why it refused, else "").

Query message (roll call): the reply's ``site`` record names the site behind a node.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

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
            )
        except KeyError as err:
            raise KeyError(f"train config lacks {err.args[0]!r}") from None


def _scalar(value: object) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number in the train config, got {type(value).__name__}")
    return value


def state_to_record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    """Trainable state -> ArrayRecord (numpy serialisation, keys kept in order)."""
    return ArrayRecord({k: Array(v.detach().cpu().contiguous().numpy()) for k, v in state.items()})


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """ArrayRecord -> numpy arrays (``np.load`` with ``allow_pickle=False`` inside Flower's ``Array.numpy``)."""
    return {k: v.numpy() for k, v in record.items()}


def record_to_state(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """ArrayRecord -> trainable state (writable copies)."""
    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in record_to_arrays(record).items()}


def train_reply(
    *, site: str, state: dict[str, torch.Tensor] | None, metrics: dict[str, int | float], reason: str = ""
) -> RecordDict:
    """The reply content of a train message: the update (None when refused), metrics and the site record."""
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
        content[ARRAYS] = state_to_record(state)
    return content


def roll_call_reply(site: str) -> RecordDict:
    return RecordDict({SITE: ConfigRecord({"name": site, "reason": ""})})
