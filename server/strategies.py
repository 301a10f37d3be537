"""Strategy factory (Flower 1.42 ``flwr.serverapp.strategy``), aggregation of validated updates, strategy state.

The strategy only aggregates: sampling, the train messages, validation, weighting caps, checkpointing and
evaluation are ours (FedProx's ``proximal-mu`` goes out in our train config). It is
handed the accepted updates sorted by site name, each reduced to its arrays and its capped ``num-examples``, so
aggregation is deterministic and never sees anything else a site reported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian, FedProx, FedTrimmedAvg, Krum, Strategy
from flwr.serverapp.strategy.fedopt import FedOpt

from client.protocol import ARRAYS, METRICS, NUM_EXAMPLES
from server.config import FLConfig
from server.validation import Verdict

_COMMON: dict[str, Any] = {
    "fraction_train": 1.0,
    "fraction_evaluate": 0.0,
    "min_train_nodes": 1,
    "min_evaluate_nodes": 0,
    "min_available_nodes": 1,
}


def make_strategy(cfg: FLConfig) -> Strategy:
    """The Flower strategy named by ``cfg.strategy``, set up with ``cfg``'s parameters.

    Node sampling is done before the strategy is asked (``fraction_train=1`` over the nodes we present), and
    federated evaluation is off (the coordinator evaluates on its held-out sets).
    """
    if cfg.strategy == "fedavg":
        return FedAvg(**_COMMON)
    if cfg.strategy == "fedprox":
        return FedProx(**_COMMON, proximal_mu=cfg.proximal_mu)
    if cfg.strategy == "fedadam":
        return FedAdam(**_COMMON, eta=cfg.server_lr, eta_l=cfg.lr, tau=cfg.server_tau)
    if cfg.strategy == "fedtrimmedavg":
        return FedTrimmedAvg(**_COMMON, beta=cfg.trim_beta)
    if cfg.strategy == "fedmedian":
        return FedMedian(**_COMMON)
    if cfg.strategy == "krum":
        return Krum(**_COMMON, num_malicious_nodes=cfg.krum_malicious)
    raise ValueError(f"fl.strategy={cfg.strategy!r} has no factory")


def aggregate(
    strategy: Strategy,
    server_round: int,
    accepted: list[Verdict],
    *,
    global_arrays: dict[str, np.ndarray],
) -> dict[str, np.ndarray] | None:
    """The strategy's new global state from the accepted updates (None when there are none).

    Args:
        accepted: verdicts with ``arrays`` ({name: array}) and capped ``weight``; aggregated in site-name order.
        global_arrays: the global state the sites were sent this round ({name: array}); server optimisers
            (FedAdam) step from it.
    """
    if not accepted:
        return None
    if isinstance(strategy, FedOpt):
        strategy.current_arrays = dict(global_arrays)
    messages = []
    for verdict in sorted(accepted, key=lambda v: v.site):
        assert verdict.arrays is not None
        content = RecordDict(
            {
                ARRAYS: ArrayRecord({k: Array(v) for k, v in verdict.arrays.items()}),
                METRICS: MetricRecord({NUM_EXAMPLES: verdict.weight}),
            }
        )
        messages.append(Message(content, metadata=_local_metadata()))  # type: ignore[call-overload]
    arrays, _ = strategy.aggregate_train(server_round, messages)
    if arrays is None:
        return None
    return {k: v.numpy() for k, v in arrays.items()}


def _local_metadata() -> Metadata:
    """Metadata of a message that never travels (the strategy reads only content and error)."""
    return Metadata(
        run_id=0,
        message_id="",
        src_node_id=0,
        dst_node_id=0,
        reply_to_message_id="",
        group_id="",
        created_at=0.0,
        ttl=0.0,
        message_type=MessageType.TRAIN,
    )


def strategy_state(strategy: Strategy) -> dict[str, np.ndarray]:
    """The strategy's state across rounds (FedAdam's moments ``m/<name>``, ``v/<name>``); {} for stateless ones."""
    if not isinstance(strategy, FedOpt):
        return {}
    state = {f"m/{k}": np.asarray(v) for k, v in (strategy.m_t or {}).items()}
    state.update({f"v/{k}": np.asarray(v) for k, v in (getattr(strategy, "v_t", None) or {}).items()})
    return state


def load_strategy_state(strategy: Strategy, state: dict[str, np.ndarray]) -> None:
    """Restore what :func:`strategy_state` returned."""
    if not isinstance(strategy, FedOpt):
        if state:
            raise ValueError(
                f"{type(strategy).__name__} keeps no state, but the checkpoint has {sorted(state)[:3]}"
            )
        return
    strategy.m_t = {k[2:]: v for k, v in state.items() if k.startswith("m/")} or None
    strategy.v_t = {k[2:]: v for k, v in state.items() if k.startswith("v/")} or None
