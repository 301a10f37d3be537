import json
from pathlib import Path

import pytest

from medim.config import TrainConfig
from medim.pipeline import Workspace, bootstrap


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws")
    tiny = TrainConfig(steps=3, batch_size=4, warmup_steps=1, autocast_bf16=False)
    return bootstrap(root, preset="tiny", synth_scale=0.15, pretrain=tiny, progress=False)


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
    again = bootstrap(workspace.root, preset="tiny", progress=False)
    assert (again.base_model / "model.safetensors").stat().st_mtime_ns == stamp
    assert (again.tokenizer / "reconstruction.json").stat().st_mtime_ns == tok
    pretrain = json.loads((again.base_model / "pretrain.json").read_text())
    assert pretrain["steps"] == 3


def test_text_tokenizer_is_reproducible():
    """The shipped tokenizer file is exactly what `python -m medim.tokenize.text build` makes."""
    from medim.tokenize.text import BUILTIN_PATH, builtin_corpus, train_tokenizer

    sample = Path(__file__).resolve().parents[3] / "shared/data/pathgen-sample/PathGen-1.6M_sample.json"
    if not sample.is_file():
        pytest.skip("PathGen sample not available on this machine")
    rebuilt = train_tokenizer(builtin_corpus(sample))
    assert json.loads(rebuilt.to_str()) == json.loads(BUILTIN_PATH.read_text())
