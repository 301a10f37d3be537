"""What leaves a site, and whose settings a site follows (no Flower runtime)."""

import pytest
from flwr.app import ConfigRecord

from client.config import SiteConfig, load_site_config, save_site_config
from client.protocol import ARRAYS, METRIC_KEYS, METRICS, SITE, TrainInstructions, train_reply
from client.train import round_privacy, round_seed
from medim.config import ConfigError, ModelConfig, load_preset
from medim.model.factory import build_from_config
from medim.model.lora import apply_lora, trainable_names, trainable_state
from medim.privacy import PrivacyConfig
from server.loop import sample_sites


@pytest.fixture(scope="module")
def model():
    return apply_lora(build_from_config(load_preset(ModelConfig, "model", "tiny"), seed=0))


def test_a_reply_carries_exactly_the_trainable_set_and_aggregate_scalars(model):
    metrics = {"num-examples": 12, "server-round": 1, "steps": 4, "refused": 0, "epsilon": 1.5, "delta": 1e-5}
    content = train_reply(
        site="hospital-a", state=trainable_state(model), metrics={**metrics, "loss-cxr": 6.0}
    )
    assert list(content[ARRAYS].keys()) == trainable_names(model)
    assert set(content.keys()) == {ARRAYS, METRICS, SITE}
    reported = content[METRICS]
    assert set(reported) <= METRIC_KEYS | {"loss-cxr", "loss-pathology"}
    assert all(isinstance(v, int | float) and not isinstance(v, list) for v in reported.values())
    assert dict(content[SITE]) == {"name": "hospital-a", "reason": ""}


def test_anything_else_may_not_leave_a_site():
    with pytest.raises(ValueError, match="may not leave a site"):
        train_reply(site="a", state=None, metrics={"num-examples": 1, "report-length-of-patient-7": 3})
    refused = train_reply(site="a", state=None, metrics={"num-examples": 0, "refused": 1}, reason="budget")
    assert ARRAYS not in refused


def test_train_config_cannot_set_privacy():
    record = TrainInstructions(1, 4, 1e-3, 4, 1, 0).to_record()
    record["epsilon-budget"] = 1e9
    record["noise-multiplier"] = 0.0
    record["privacy"] = "off"
    parsed = TrainInstructions.from_record(record)
    assert parsed == TrainInstructions(1, 4, 1e-3, 4, 1, 0)
    assert not {f for f in TrainInstructions.__dataclass_fields__ if "epsilon" in f or "noise" in f}
    with pytest.raises(KeyError, match="local-steps"):
        TrainInstructions.from_record(ConfigRecord({"server-round": 1}))


def test_site_file_round_trip_and_errors_name_the_setting(tmp_path):
    cfg = SiteConfig(
        name="hospital-a",
        data=["/data/cxr"],
        base_model="/m",
        tokenizer="/t",
        state_dir="/s",
        privacy=PrivacyConfig(epsilon_budget=2.0),
    )
    save_site_config(cfg, tmp_path / "site.yaml")
    assert load_site_config(tmp_path / "site.yaml") == cfg
    with pytest.raises(ConfigError, match="site.modalities"):
        SiteConfig(modalities=["mri"])
    with pytest.raises(ConfigError, match="privacy.epsilon_budget"):
        SiteConfig(privacy={"epsilon_budget": -1.0})
    save_site_config(SiteConfig(name="b", data=["/d"], base_model="/m", tokenizer="/t"), tmp_path / "b.yaml")
    with pytest.raises(ConfigError, match="site.state_dir"):
        load_site_config(tmp_path / "b.yaml")
    (tmp_path / "c.yaml").write_text("name: c\nprivacy: {epsilon_budgett: 3}\n")
    with pytest.raises(ConfigError, match="epsilon_budgett"):
        load_site_config(tmp_path / "c.yaml")


def test_seeds_and_sampling_are_reproducible():
    assert round_seed(0, 1, "a") == round_seed(0, 1, "a") != round_seed(0, 2, "a")
    assert round_privacy(PrivacyConfig(), 3, "a").seed is None
    assert round_privacy(PrivacyConfig(seed=5), 3, "a").seed == round_seed(5, 3, "a")
    sites = ["d", "a", "c", "b"]
    draw = sample_sites(sites, fraction=0.5, minimum=1, seed=0, server_round=2)
    assert len(draw) == 2 and draw == sorted(draw)
    assert draw == sample_sites(sites[::-1], fraction=0.5, minimum=1, seed=0, server_round=2)
    assert sample_sites(sites, fraction=0.1, minimum=3, seed=0, server_round=1) != []
    assert len(sample_sites(sites, fraction=0.1, minimum=3, seed=0, server_round=1)) == 3
