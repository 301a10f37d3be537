"""summary.json pieces from hand-made round records; composing medim-simulate's config; the compare table."""

from dataclasses import replace

import pytest

from client.config import SiteConfig, load_site_config
from medim.config import ConfigError, load_preset
from medim.pipeline import Workspace
from medim.privacy import PrivacyConfig
from simulation.compare import Row, markdown
from simulation.config import compose_simulate
from simulation.run import write_site_configs
from simulation.summary import curves, round_entry, site_entries


def _site(name, status, weight, loss, eps, examples=10):
    metrics = {"loss": loss, "epsilon": eps, "delta": 1e-5, "num-examples": examples}
    reason = "" if status == "accepted" else "budget"
    return {"site": name, "status": status, "reason": reason, "weight": weight, "metrics": metrics}


RECORDS = [
    {"round": 0, "eval": {"round": 0, "losses": {"cxr": {"loss": 6.0, "image": 3.0, "text": 3.0, "n": 4.0}}}},
    {
        "round": 1,
        "sites": [_site("a", "accepted", 30, 5.0, 1.0, 30), _site("b", "accepted", 10, 1.0, 2.0, 10)],
        "bytes_up": 200,
        "bytes_down": 400,
        "seconds": 1.5,
        "eval": {
            "round": 1,
            "losses": {"cxr": {"loss": 5.0, "image": 2.5, "text": 2.5, "n": 4.0}},
            "metrics": {"cxr": {"label_f1_micro": 0.5, "report_protocol": "coco", "samples": 4.0}},
            "extra": {},
        },
    },
    {
        "round": 2,
        "sites": [
            _site("a", "accepted", 30, 4.0, 1.5, 30),
            _site("b", "refused", 0, 0.0, 2.0),
            _site("c", "accepted", 10, 4.0, float("inf"), 10),  # DP off: no privacy curve
        ],
        "eval": None,
    },
]


def test_round_entries_merge_losses_and_generation_metrics():
    rounds = [round_entry(r) for r in RECORDS]
    assert rounds[0]["train_loss"] is None and rounds[0]["bytes_up"] == 0
    assert rounds[1]["train_loss"] == pytest.approx((30 * 5.0 + 10 * 1.0) / 40)
    assert rounds[1]["eval"]["cxr"] == {
        "loss": 5.0,
        "image": 2.5,
        "text": 2.5,
        "n": 4.0,
        "label_f1_micro": 0.5,
        "report_protocol": "coco",
        "samples": 4.0,
    }
    assert rounds[2]["eval"] is None and rounds[2]["train_loss"] == 4.0
    assert rounds[2]["refused"] == [{"site": "b", "reason": "budget"}]


def test_site_entries_and_curves():
    rounds = [round_entry(r) for r in RECORDS]
    ledger = {
        "a": {"epsilon": 1.5, "delta": 1e-5, "rounds": 2.0},
        "b": {"epsilon": 2.0, "delta": 1e-5, "rounds": 1.0},
    }
    configs = {
        "a": SiteConfig(name="a", data=["/x/a/cxr", "/x/a/pathology"]),
        "b": SiteConfig(name="b", data=["/x/b/cxr", "/x/b/pathology"], modalities=["pathology"]),
    }
    sites = site_entries(rounds, ledger, configs)
    assert sites["a"] == {
        "modalities": ["cxr", "pathology"],
        "num_examples": 30,
        "epsilon": 1.5,
        "delta": 1e-5,
        "rounds_trained": 2,
    }
    assert sites["b"]["modalities"] == ["pathology"] and sites["b"]["num_examples"] == 10
    c = curves(rounds)
    assert c["eval_curves"] == {"cxr": [[0, 6.0], [1, 5.0]]}
    assert c["metric_curves"]["cxr"]["label_f1_micro"] == [[1, 0.5]]
    assert "samples" not in c["metric_curves"]["cxr"]
    assert c["privacy_curves"] == {"a": [[1, 1.0], [2, 1.5]], "b": [[1, 2.0], [2, 2.0]]}


def test_compose_applies_overrides_and_the_run_dir(tmp_path):
    cfg = compose_simulate(["sim=smoke", f"hydra.run.dir={tmp_path}", "fl.rounds=3", "dp=off"])
    assert cfg.out == tmp_path and cfg.fl.rounds == 3 and cfg.sim.dp == "off"
    assert cfg.sim.fl == "smoke" and cfg.fl.local_steps == 3  # the sim preset's fl preset
    prox = compose_simulate(["sim=smoke", "fl.strategy=fedprox", "fl.proximal_mu=0.1", "fl=tiny"])
    assert prox.fl.strategy == "fedprox" and prox.sim.fl == "tiny" and prox.fl.local_steps == 4
    assert compose_simulate([]).sim.tokenizer == "small-f8"


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("fl.rounds=0", "fl.rounds"),
        ("fl.rounds=abc", "fl.rounds"),
        ("sim=nope", "sim/nope"),
        ("dp=nope", "dp/nope"),
        ("baseline=x", "baseline"),
        ("sim.synth_scale=-1", "sim.synth_scale"),
        ("sim.noise_multiplier=0", "sim.noise_multiplier"),
        ("sim.epsilon_budget=-2", "sim.epsilon_budget"),
        ("fl.generation.samples=1", "fl.generation.samples"),
    ],
)
def test_compose_names_the_bad_setting(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        compose_simulate([override])


def test_sweep_settings_replace_the_privacy_preset_for_every_site(tmp_path):
    sim = compose_simulate(["sim.noise_multiplier=0.5", "sim.epsilon_budget=20"]).sim
    sim = replace(sim, site_epsilon={"b": 3.0})
    ws = Workspace(
        root=tmp_path, preset="small", seed=0, sites={"a": [tmp_path / "a"], "b": [tmp_path / "b"]}
    )
    sites = write_site_configs(sim, ws, tmp_path / "run", ["a", "b"])
    preset = load_preset(PrivacyConfig, "dp", "default")
    for name, budget in (("a", 20.0), ("b", 3.0)):  # a site's own budget still wins
        privacy = load_site_config(tmp_path / "run" / "sites" / name / "site.yaml").privacy
        assert privacy == sites[name].privacy
        assert (privacy.noise_multiplier, privacy.epsilon_budget) == (0.5, budget)
        assert (privacy.max_grad_norm, privacy.delta) == (preset.max_grad_norm, preset.delta)
    default = write_site_configs(compose_simulate([]).sim, ws, tmp_path / "run2", ["a"])["a"].privacy
    assert default == preset


def test_markdown_table():
    rows = [
        Row("central", ["a", "b"], {"cxr": 1.0, "pathology": 2.0}, {"cxr": 0.5, "pathology": None}, None),
        Row(
            "federated-dp", ["a", "b"], {"cxr": 1.5, "pathology": 2.5}, {"cxr": 0.25, "pathology": 0.75}, 3.2
        ),
    ]
    lines = markdown(rows, ["cxr", "pathology"]).splitlines()
    assert lines[0].startswith("| model | trained on | loss cxr | loss pathology | label F1 cxr")
    assert lines[2] == "| central | a, b | 1.000 | 2.000 | 0.500 | n/a | no DP |"
    assert lines[3].endswith("| 0.250 | 0.750 | 3.20 |")
