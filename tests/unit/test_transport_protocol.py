"""16-bit transport in the Flower protocol (``fl.transport``): the round trip, validation of a bfloat16 wire,
wrong dtypes rejected, the round's ``bytes_up`` halved (a round through the real ClientApp handler)."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord
from flwr.supercore.task_identity import TaskIdentity

import client.app
from client.protocol import (
    ARRAYS,
    WIRE_DTYPES,
    TrainInstructions,
    arrays_to_record,
    record_to_arrays,
    record_to_state,
    state_to_record,
    train_reply,
)
from client.train import SiteRound
from medim.config import ConfigError
from medim.model.transport import ABSOLUTE_ERROR, RELATIVE_ERROR
from server.audit import AuditLog
from server.checkpoint import ServerState
from server.config import FLConfig, ValidationConfig
from server.loop import train_round
from server.strategies import make_strategy
from server.validation import ACCEPTED, REJECTED, check_content
from simulation.summary import round_entry

rng = np.random.default_rng(0)
GLOBAL = {
    "lora_A": rng.normal(size=(8, 512)).astype(np.float32),
    "lora_B": rng.normal(scale=1e-3, size=(512, 8)).astype(np.float32),
    "bias": np.linspace(-3, 3, 32, dtype=np.float32),
    "gate": np.array(0.3, dtype=np.float32),  # 0-d
}
BOUNDS = ValidationConfig(max_update_norm=10.0, max_update_bytes=1_000_000, max_num_examples=50)


def shifted(delta=0.01):
    return {k: torch.from_numpy(v.copy()) + delta for k, v in GLOBAL.items()}


def reply(state, transport, *, round_=3):
    metrics = {"num-examples": 10, "server-round": round_, "steps": 5, "refused": 0}
    return train_reply(site="hospital-a", state=state, metrics=metrics, transport=transport)


def check(content, transport):
    return check_content(content, global_arrays=GLOBAL, server_round=3, bounds=BOUNDS, transport=transport)


@pytest.mark.parametrize("transport", ["float32", "bfloat16", "float16"])
def test_round_trip_puts_the_transport_dtype_on_the_wire_and_decodes_to_float32(transport):
    state = {k: torch.from_numpy(v) for k, v in GLOBAL.items()}
    record = state_to_record(state, transport)
    wire = {k: v.numpy() for k, v in record.items()}
    assert all(v.dtype == WIRE_DTYPES[transport] for v in wire.values())
    assert list(record) == list(GLOBAL)  # keys in order
    payload = sum(v.nbytes for v in wire.values())
    assert payload == sum(v.nbytes for v in GLOBAL.values()) // (1 if transport == "float32" else 2)
    decoded = record_to_state(record, transport)
    for key, value in state.items():
        assert decoded[key].dtype == torch.float32 and decoded[key].shape == value.shape
        bound = RELATIVE_ERROR[transport] * value.abs() + ABSOLUTE_ERROR[transport]
        assert bool(((decoded[key] - value).abs() <= bound).all()), key
    if transport == "bfloat16":  # the same rounding as torch's cast, widened exactly
        assert torch.equal(decoded["bias"], state["bias"].to(torch.bfloat16).float())
    # the coordinator's numpy path encodes identically
    again = record_to_arrays(arrays_to_record(GLOBAL, transport), transport)
    assert all(np.array_equal(again[k], decoded[k].numpy()) for k in GLOBAL)


def test_train_instructions_carry_the_transport_and_default_to_float32():
    instructions = TrainInstructions(3, 4, 1e-3, 8, 1, 0, transport="bfloat16")
    assert TrainInstructions.from_record(instructions.to_record()) == instructions
    record = instructions.to_record()
    del record["transport"]  # a coordinator from before the option
    assert TrainInstructions.from_record(record).transport == "float32"
    record["transport"] = "int8"
    with pytest.raises(ValueError, match="bfloat16"):
        TrainInstructions.from_record(record)
    with pytest.raises(ConfigError, match="fl.transport"):
        FLConfig(transport="bf16")


@pytest.mark.parametrize("transport", ["bfloat16", "float16"])
def test_a_16_bit_reply_is_validated_and_decoded_to_float32(transport):
    verdict = check(reply(shifted(0.01), transport), transport)
    assert verdict.status == ACCEPTED, verdict.reason
    assert verdict.arrays is not None and all(v.dtype == np.float32 for v in verdict.arrays.values())
    exact = np.sqrt(sum(v.size for v in GLOBAL.values()) * 0.01**2)
    assert verdict.norm == pytest.approx(exact, rel=0.05)  # the 16-bit rounding of w_site is in the norm
    fp32 = check(reply(shifted(0.01), "float32"), "float32")
    assert verdict.nbytes < 0.55 * fp32.nbytes


@pytest.mark.parametrize(
    ("sent", "expected", "needle"),
    [
        ("float32", "bfloat16", "dtype float32 != expected uint16 (transport bfloat16)"),
        ("float16", "bfloat16", "dtype float16 != expected uint16 (transport bfloat16)"),
        ("bfloat16", "float32", "dtype uint16 != expected float32 (transport float32)"),
        ("bfloat16", "float16", "dtype uint16 != expected float16 (transport float16)"),
    ],
)
def test_a_reply_in_another_dtype_than_the_transport_is_rejected(sent, expected, needle):
    verdict = check(reply(shifted(), sent), expected)
    assert verdict.status == REJECTED and verdict.arrays is None
    assert needle in verdict.reason


def _with(content, key, value):
    arrays = {k: v.numpy() for k, v in content[ARRAYS].items()}
    content[ARRAYS] = ArrayRecord({**{k: Array(v) for k, v in arrays.items()}, key: Array(value)})
    return content


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (np.full(32, 0x7F80, np.uint16), "bias: non-finite values"),  # bfloat16 +inf
        (np.full(32, 0x7FC0, np.uint16), "bias: non-finite values"),  # bfloat16 NaN
        (np.zeros(33, np.uint16), "bias: shape (33,) != expected (32,)"),
        (np.full(32, 0x4700, np.uint16), "exceeds fl.validation.max_update_norm"),  # 32768.0
    ],
)
def test_bad_bfloat16_payloads_are_rejected(value, needle):
    verdict = check(_with(reply(shifted(), "bfloat16"), "bias", value), "bfloat16")
    assert verdict.status == REJECTED and needle in verdict.reason


class EchoGrid:
    """A Grid whose nodes answer train messages through the real ClientApp handler (:func:`client.app.
    handle_train`) with a fake site round: the received state plus 0.01."""

    def __init__(self, sites):
        self.sites = sites

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for node, msg in enumerate(messages, start=1):
            msg.metadata.__dict__["_message_id"] = f"m{node}"
            site = self.sites[msg.metadata.dst_node_id]
            reply = client.app.handle_train(msg, site)
            reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
            replies.append(reply)
        return replies


def _round(transport, monkeypatch, tmp_path):
    received = []

    def fake_round(site, instructions, state):
        received.append({k: v.dtype for k, v in state.items()})
        metrics = {"num-examples": 10, "server-round": instructions.server_round, "steps": 4, "refused": 0}
        return SiteRound(state={k: v + 0.01 for k, v in state.items()}, metrics=metrics)

    monkeypatch.setattr(client.app, "run_site_round", fake_round)
    for key in ("_run_id", "_node_id", "_task_id"):  # what a ServerApp process sets before main()
        monkeypatch.setattr(TaskIdentity, key, 1)
    fl = FLConfig(transport=transport)
    sites = {1: type("Site", (), {"name": "hospital-a"})(), 2: type("Site", (), {"name": "pathlab-c"})()}
    state = ServerState(round=0, trainable={k: v.copy() for k, v in GLOBAL.items()}, config_hash="x")
    record = train_round(
        EchoGrid(sites),
        state=state,
        strategy=make_strategy(fl),
        fl=fl,
        nodes={"hospital-a": 1, "pathlab-c": 2},
        server_round=1,
        audit=AuditLog(tmp_path / f"audit-{transport}.jsonl"),
    )
    assert all(dtype == torch.float32 for r in received for dtype in r.values())  # sites train in fp32
    assert all(v.dtype == np.float32 for v in state.trainable.values())  # the global state stays fp32
    return record, state


def test_bfloat16_transport_halves_the_rounds_bytes(monkeypatch, tmp_path):
    fp32, fp32_state = _round("float32", monkeypatch, tmp_path)
    bf16, bf16_state = _round("bfloat16", monkeypatch, tmp_path)
    for record in (fp32, bf16):
        assert [s["status"] for s in record["sites"]] == [ACCEPTED, ACCEPTED]
    payload = sum(v.nbytes for v in GLOBAL.values())
    a, b = round_entry(fp32), round_entry(bf16)  # what summary.json reports
    assert a["bytes_up"] - b["bytes_up"] == payload  # two replies, each half the fp32 payload; framing equal
    assert 0.49 < b["bytes_up"] / a["bytes_up"] < 0.52 and 0.49 < b["bytes_down"] / a["bytes_down"] < 0.52
    for (
        key,
        value,
    ) in fp32_state.trainable.items():  # aggregated in fp32 from bf16 replies: the fp32 result up
        # to two bf16 roundings (the global state sent, the update returned) of values of about |w| + 0.01
        bound = 2 * RELATIVE_ERROR["bfloat16"] * (np.abs(value) + 0.01)
        assert (np.abs(bf16_state.trainable[key] - value) <= bound).all(), key
