"""Fault plans: every reply-side fault applied to an honest reply meets the coordinator's validation as documented."""

import numpy as np
import pytest
import torch

from client.protocol import train_reply
from medim.config import ConfigError
from server.config import ValidationConfig
from server.validation import ACCEPTED, REJECTED, check_content
from simulation.faults import KINDS, Fault, FaultPlan, corrupt, load_fault_plan

ROUND = 3
BOUNDS = ValidationConfig(max_update_norm=5.0, max_num_examples=1000)


def honest(transport="float32"):
    gen = torch.Generator().manual_seed(0)
    glob = {"a.lora_A": torch.randn(4, 6, generator=gen), "b.lora_B": torch.randn(6, 4, generator=gen)}
    state = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in glob.items()}
    metrics = {"num-examples": 12, "server-round": ROUND, "steps": 4, "refused": 0, "epsilon": 1.5}
    content = train_reply(site="hospital-a", state=state, metrics=metrics, transport=transport)
    return content, {k: v.numpy() for k, v in glob.items()}


def judge(kind: str, transport="float32", **kw):
    content, glob = honest(transport)
    bad = corrupt(content, Fault(site="hospital-a", kind=kind, **kw), global_arrays=glob, transport=transport)
    return check_content(bad, global_arrays=glob, server_round=ROUND, bounds=BOUNDS, transport=transport)


def test_the_honest_reply_is_accepted():
    content, glob = honest()
    verdict = check_content(content, global_arrays=glob, server_round=ROUND, bounds=BOUNDS)
    assert verdict.status == ACCEPTED and verdict.weight == 12 and 0 < verdict.norm < 1


@pytest.mark.parametrize(
    ("kind", "kw", "reason"),
    [
        ("nan", {}, "non-finite values"),
        ("inf", {}, "non-finite values"),
        ("wrong_shape", {}, "shape (5, 6) != expected (4, 6)"),
        ("extra_key", {}, "unexpected ['backbone.model.embed_tokens.weight']"),
        ("huge_norm", {"factor": 1e6}, "exceeds fl.validation.max_update_norm=5.0"),
        ("scale", {"factor": 100.0}, "exceeds fl.validation.max_update_norm=5.0"),
        ("stale_round", {}, "round mismatch: reply is for round 2, expected 3"),
    ],
)
@pytest.mark.parametrize("transport", ["float32", "bfloat16"])
def test_bad_updates_are_rejected_with_a_reason(kind, kw, reason, transport):
    verdict = judge(kind, transport, **kw)
    assert verdict.status == REJECTED and reason in verdict.reason and verdict.arrays is None


def test_inflated_num_examples_is_capped():
    verdict = judge("inflate", factor=1000)
    assert verdict.status == ACCEPTED and verdict.reported_examples == 12000
    assert verdict.weight == 1000 and verdict.capped


def test_a_sign_flip_passes_per_update_bounds():
    """Same norm as the honest update: only a robust aggregator can limit it (tests/unit/test_robust_aggregation)."""
    content, glob = honest()
    straight = check_content(content, global_arrays=glob, server_round=ROUND, bounds=BOUNDS)
    flipped = judge("sign_flip")
    assert flipped.status == ACCEPTED and flipped.norm == pytest.approx(straight.norm, rel=1e-5)
    assert flipped.arrays is not None and straight.arrays is not None
    for k, g in glob.items():
        np.testing.assert_allclose(flipped.arrays[k] - g, -(straight.arrays[k] - g), atol=1e-6)


def test_the_mixed_plan_covers_every_kind_and_names_its_sites():
    plan = load_fault_plan("mixed")
    # `killed` takes the site's worker process down: tests/sim/test_faults.py runs it on its own, with rounds after
    assert {f.kind for f in plan.faults} == set(KINDS) - {"killed"}
    assert plan.fl["timeout_s"] < min(f.seconds for f in plan.faults if f.kind == "slow")
    assert [f.kind for f in plan.for_site("hospital-b", 2)] == ["slow"]
    assert plan.for_site("hospital-d", 1) == []


@pytest.mark.parametrize(
    ("fault", "setting"),
    [
        ({"site": "a", "kind": "meltdown"}, "faults.kind"),
        ({"site": "a", "kind": "slow"}, "faults.seconds"),
        ({"site": "a", "kind": "scale", "factor": -1.0}, "faults.factor"),
        ({"site": "a", "kind": "nan", "rounds": [0]}, "faults.rounds"),
    ],
)
def test_bad_fault_settings_are_named(fault, setting):
    with pytest.raises(ConfigError, match=setting):
        FaultPlan(faults=[fault])


def test_a_plan_for_a_site_that_does_not_join_is_refused():
    with pytest.raises(ConfigError, match="faults.sites"):
        FaultPlan(faults=[{"site": "x", "kind": "nan"}], sites=["a"])
    with pytest.raises(ConfigError, match="not found"):
        load_fault_plan("no-such-plan")
