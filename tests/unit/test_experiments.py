"""The paper-experiment runners (experiments/) end to end on the tiny preset with very few steps."""

import json
from pathlib import Path

import pytest
import torch

from experiments import downstream, evaluation
from experiments.ablation import VARIANTS, pick_variants
from experiments.classifiers import domain_classifier
from experiments.cli import main
from medim.config import ModelConfig, SamplerConfig, load_preset
from medim.model.factory import build_from_config

FAST = ["--preset", "tiny", "--steps", "2", "--samples", "3", "--sampler-steps", "2", "--scale", "0.15"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ws")


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    """Domain classifiers trained for one step (cached where the ablation looks for them)."""
    folder = tmp_path_factory.mktemp("classifiers")
    for modality in ("cxr", "pathology"):
        domain_classifier(modality, folder, steps=1, seed=0, eval_count=4)
    return folder


def _first_position_logits(model, x, sigma):
    with torch.no_grad():
        return model(x, sigma)[:, 0]


def test_variants_really_differ():
    base = load_preset(ModelConfig, "model", "tiny")
    models = {v.name: build_from_config(v.apply(base), seed=0) for v in VARIANTS}
    assert models["causal"].cfg.attention == "causal" and models["medim"].cfg.attention == "bidirectional"
    assert models["no-time"].time is None and models["no-time"].adaln is None
    assert models["medim"].time is not None and models["adaln-single"].cfg.adaln == "single"
    assert type(models["adaln-single"].adaln) is not type(models["medim"].adaln)
    vocab = models["medim"].vocab
    x = torch.full((1, vocab.seq_len), vocab.mask)
    changed = x.clone()
    changed[0, -1] = vocab.pad
    sigma = torch.ones(1)
    for name, model in models.items():
        same = torch.allclose(
            _first_position_logits(model, x, sigma), _first_position_logits(model, changed, sigma)
        )
        assert same == (name == "causal"), name
    no_time = models["no-time"]
    assert torch.equal(no_time(x, torch.full((1,), 0.1)), no_time(x, torch.full((1,), 5.0)))
    with pytest.raises(ValueError, match="unknown variant"):
        pick_variants(["bogus"])


def test_ablation_end_to_end(workspace: Path, classifier_dir: Path, tmp_path: Path):
    out = tmp_path / "ablation"
    args = ["ablation", *FAST, "--workspace", str(workspace), "--out", str(out), "--no-progress"]
    args += ["--classifier-dir", str(classifier_dir), "--classifier-steps", "1", "--variant", "medim"]
    assert main([*args, "--variant", "causal"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["command"].startswith("python -m experiments ablation --preset tiny")
    assert set(results["variants"]) == {"medim", "causal"}
    assert results["variants"]["causal"]["model"]["attention"] == "causal"
    for variant in results["variants"].values():
        assert variant["train"]["steps"] == 2
        assert set(variant["heldout"]) == {"cxr", "pathology"}
        for r in variant["heldout"].values():
            assert set(r["loss"]) == {"loss", "image", "text", "n"}
            assert {"micro_f1", "macro_f1"} <= set(r["image_to_report"])
            assert {"domain_fid", "finding_accuracy", "finding_exact_match"} <= set(r["report_to_image"])
            assert r["report_to_image"]["n"] == 3
    markdown = (out / "results.md").read_text()
    assert "| causal | cxr |" in markdown and results["command"] in markdown


def test_downstream_adds_the_generated_pairs(workspace: Path, tmp_path: Path, monkeypatch):
    seen: list[torch.Tensor] = []
    real_train = downstream.train_central

    def recording(model_cfg, x0, configs, **kwargs):
        seen.append(x0)
        return real_train(model_cfg, x0, configs, **kwargs)

    monkeypatch.setattr(downstream, "train_central", recording)

    def no_java() -> str:  # the coco protocol starts JVMs (slow); its fallback is what is exercised here
        raise evaluation.JavaNotFoundError("java disabled by the test")

    monkeypatch.setattr(evaluation, "require_java", no_java)
    out = tmp_path / "downstream"
    args = ["downstream", *FAST, "--workspace", str(workspace), "--out", str(out), "--no-progress"]
    assert main([*args, "--generated", "5", "--prompt-tokens", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    real, augmented = seen
    assert augmented.shape[0] == real.shape[0] + 5 and torch.equal(augmented[: real.shape[0]], real)
    assert results["data"]["generated_pairs"] == 5
    assert results["data"]["augmented_pairs"] == results["data"]["real_pairs"] + 5
    for arm in ("real", "real+generated"):
        for r in results["arms"][arm]["heldout"].values():
            assert {"bleu1", "bleu4", "meteor", "rouge_l"} <= set(r["text"])
            assert r["text"]["protocol"] == "medim" and "coco" in r["text"]["unavailable"]
            assert {"micro_f1", "macro_f1"} <= set(r["clinical"])
    change = results["change"]["cxr"]["relative_change"]
    assert {"bleu1", "meteor", "clinical_micro_f1"} <= set(change)
    assert "relative change" in (out / "results.md").read_text()


def test_generated_rows_are_clean_sequences():
    model = build_from_config(load_preset(ModelConfig, "model", "tiny"), seed=0)
    sampler = load_preset(SamplerConfig, "sampler", "default", steps=2)
    rows = downstream.generate_pairs(model, 3, sampler, seed=0)
    vocab = model.vocab
    assert rows.shape == (3, vocab.seq_len)
    for row in rows:
        assert torch.equal(row, vocab.sequence(vocab.image_codes(row), vocab.text_ids(row)))
