"""Update validation: every rejection reason on hand-made replies, the num-examples cap, refusals."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from client.protocol import ARRAYS, METRICS, train_reply
from server.config import ValidationConfig
from server.validation import ACCEPTED, REFUSED, REJECTED, check_content, update_norm

GLOBAL = {"a": np.zeros((2, 3), np.float32), "b": np.ones(4, np.float32)}
BOUNDS = ValidationConfig(max_update_norm=10.0, max_update_bytes=10_000, max_num_examples=50)


def reply(state=None, *, round_=3, n=10, **metrics):
    state = {k: torch.from_numpy(v.copy()) for k, v in GLOBAL.items()} if state is None else state
    values = {"num-examples": n, "server-round": round_, "steps": 5, "refused": 0, **metrics}
    return train_reply(site="hospital-a", state=state, metrics=values)


def check(content):
    return check_content(content, global_arrays=GLOBAL, server_round=3, bounds=BOUNDS)


def test_a_good_update_is_accepted_with_its_norm():
    state = {"a": torch.full((2, 3), 0.5), "b": torch.ones(4)}
    verdict = check(reply(state))
    assert verdict.status == ACCEPTED and verdict.site == "hospital-a" and verdict.reason == ""
    assert verdict.weight == 10 and not verdict.capped
    assert verdict.norm == pytest.approx(np.sqrt(6 * 0.25))
    assert verdict.arrays is not None and set(verdict.arrays) == set(GLOBAL)


def test_num_examples_is_capped():
    verdict = check(reply(n=10_000))
    assert (
        verdict.accepted and verdict.weight == 50 and verdict.capped and verdict.reported_examples == 10_000
    )


def with_array(content, key, value):
    """``content`` with one array replaced as it arrives (a site may send any bytes, not just what
    ``train_reply`` encodes)."""
    arrays = {k: v.numpy() for k, v in content[ARRAYS].items()}
    content[ARRAYS] = ArrayRecord({**{k: Array(v) for k, v in arrays.items()}, key: Array(value)})
    return content


def good_state():
    return {k: torch.from_numpy(v.copy()) for k, v in GLOBAL.items()}


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: reply(round_=2), "round mismatch: reply is for round 2, expected 3"),
        (lambda: reply({"a": torch.zeros(2, 3)}), "keys differ from the trainable set: missing ['b']"),
        (lambda: reply({**good_state(), "c": torch.zeros(1)}), "unexpected ['c']"),
        (lambda: reply({**good_state(), "a": torch.zeros(3, 2)}), "a: shape (3, 2) != expected (2, 3)"),
        (lambda: with_array(reply(), "b", np.ones(4, np.float64)), "b: dtype float64 != expected float32"),
        (lambda: reply({**good_state(), "b": torch.tensor([1.0, float("nan"), 1.0, 1.0])}), "b: non-finite"),
        (
            lambda: reply({**good_state(), "a": torch.full((2, 3), 100.0)}),
            "exceeds fl.validation.max_update_norm",
        ),
        (
            lambda: reply({**good_state(), "a": torch.zeros(2, 3000)}),
            "exceeds fl.validation.max_update_bytes",
        ),
        (lambda: reply(n=0), "num-examples must be a positive integer"),
        (lambda: reply(n=2.5), "num-examples must be a positive integer"),
    ],
)
def test_each_rejection_names_its_reason(make, needle):
    verdict = check(make())
    assert verdict.status == REJECTED and not verdict.accepted and verdict.arrays is None
    assert needle in verdict.reason


def test_missing_records_are_rejected():
    content = reply()
    del content[ARRAYS]
    assert "no ArrayRecord" in check(content).reason
    no_metrics = RecordDict({ARRAYS: ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})})
    assert "no MetricRecord" in check(no_metrics).reason
    listy = RecordDict({METRICS: MetricRecord({"num-examples": [1, 2], "server-round": 3})})
    assert "not a scalar" in check(listy).reason


def test_a_refusal_is_not_a_rejection():
    content = train_reply(
        site="pathlab-c",
        state=None,
        metrics={"num-examples": 0, "server-round": 3, "refused": 1},
        reason="epsilon budget spent",
    )
    verdict = check(content)
    assert verdict.status == REFUSED and verdict.reason == "epsilon budget spent" and verdict.weight == 0


def test_reply_without_site_record_is_still_judged():
    content = reply()
    content["site"] = ConfigRecord({})
    assert check(content).site == "?"


def test_update_norm_is_over_all_tensors():
    other = {"a": np.ones((2, 3), np.float32), "b": np.ones(4, np.float32) * 3}
    assert update_norm(other, GLOBAL) == pytest.approx(np.sqrt(6 + 4 * 4))
