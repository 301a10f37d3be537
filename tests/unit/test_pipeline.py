import json
from pathlib import Path

import pytest

from medim.config import ConfigError, TrainConfig
from medim.pipeline import Workspace, bootstrap

TINY = TrainConfig(steps=3, batch_size=4, warmup_steps=1, autocast_bf16=False)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws")
    return bootstrap(root, preset="tiny", synth_scale=0.15, pretrain=TINY, progress=False)


def test_workspace_layout(workspace: Workspace):
    assert set(workspace.sites) == {"hospital-a", "hospital-b", "pathlab-c", "hospital-d"}
    assert {p.name for p in workspace.sites["hospital-d"]} == {"cxr", "pathology"}
    assert set(workspace.heldout) == {"cxr", "pathology"}
    assert (workspace.tokenizer / "reconstruction.json").is_file()
    assert (workspace.base_model / "model.safetensors").is_file()
    loaded = Workspace.load(workspace.root)
    assert loaded.sites == workspace.sites and loaded.heldout == workspace.heldout


def test_sequences_follow_the_vocabulary(workspace: Workspace):
    model = workspace.load_base()
    seqs = workspace.sequences(workspace.sites["hospital-d"], model)
    v = model.vocab
    assert seqs.x0.shape[1] == v.seq_len and len(seqs) == len(seqs.ids) == len(seqs.reports)
    assert (seqs.x0[:, 0] == v.boi).all() and (seqs.x0[:, v.image_tokens + 1] == v.eoi).all()
    assert ((seqs.x0[:, v.image_slice] >= v.image_offset) & (seqs.x0[:, v.image_slice] < v.size)).all()
    assert (seqs.x0[:, v.text_slice] == v.eos).any(dim=1).all()
    assert set(seqs.modalities) == {"cxr", "pathology"}
    cxr = seqs.select(modality="cxr", splits=["train"])
    assert set(cxr.modalities) == {"cxr"} and set(cxr.splits) == {"train"}


def test_bootstrap_reuses_finished_steps(workspace: Workspace):
    stamp = (workspace.base_model / "model.safetensors").stat().st_mtime_ns
    tok = (workspace.tokenizer / "reconstruction.json").stat().st_mtime_ns
    again = bootstrap(workspace.root, preset="tiny", synth_scale=0.15, pretrain=TINY, progress=False)
    assert again.base_model == workspace.base_model and again.tokenizer == workspace.tokenizer
    assert (again.base_model / "model.safetensors").stat().st_mtime_ns == stamp
    assert (again.tokenizer / "reconstruction.json").stat().st_mtime_ns == tok
    pretrain = json.loads((again.base_model / "pretrain.json").read_text())
    assert pretrain["steps"] == 3


def test_cache_is_keyed_by_the_config_hash(workspace: Workspace):
    """Another pretraining config gets its own base model beside the first; the tokenizer is shared."""
    assert workspace.base_model.name == f"base-{workspace.base_hash}" and len(workspace.base_hash) == 12
    other = bootstrap(
        workspace.root,
        preset="tiny",
        synth_scale=0.15,
        pretrain=TrainConfig(steps=2, batch_size=4, warmup_steps=1, autocast_bf16=False),
        progress=False,
    )
    assert other.tokenizer == workspace.tokenizer and other.base_model != workspace.base_model
    assert json.loads((other.base_model / "pretrain.json").read_text())["steps"] == 2
    assert (workspace.base_model / "model.safetensors").is_file()
    assert Workspace.load(workspace.root).base_model == other.base_model


def test_bootstrap_refuses_a_tokenizer_that_does_not_match_the_model(workspace: Workspace):
    with pytest.raises(ConfigError, match="tokenizer preset 'small-f8' makes 64"):
        bootstrap(workspace.root, preset="tiny", tokenizer_preset="small-f8", progress=False)


def test_bootstrap_refuses_other_synthetic_settings(workspace: Workspace):
    with pytest.raises(ConfigError, match="synth_scale"):
        bootstrap(workspace.root, preset="tiny", synth_scale=0.3, pretrain=TINY, progress=False)


def test_text_tokenizer_is_reproducible():
    """The shipped tokenizer file is exactly what `python -m medim.tokenize.text build` makes."""
    from medim.tokenize.text import BUILTIN_PATH, builtin_corpus, train_tokenizer

    sample = Path(__file__).resolve().parents[3] / "shared/data/pathgen-sample/PathGen-1.6M_sample.json"
    if not sample.is_file():
        pytest.skip("PathGen sample not available on this machine")
    rebuilt = train_tokenizer(builtin_corpus(sample))
    assert json.loads(rebuilt.to_str()) == json.loads(BUILTIN_PATH.read_text())
