"""medim-generate: outputs, seeds, training-identical preprocessing, adapters, LoRA merge, named errors."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import medim
from medim.config import load_preset
from medim.data.prepare import prepare_archive
from medim.data.synthetic import SynthConfig, generate
from medim.generate import main
from medim.generate_inputs import prepare_image
from medim.generate_model import GenerateError, load_model, resolve_adapter
from medim.model.checkpoint import save_adapter, save_checkpoint
from medim.model.lora import is_lora, trainable_state
from medim.model.merge import merge_lora
from medim.tokenize.vq import VQTokenizer, load_tokenizer
from medim.tokenize.vq_cache import encode_folder
from medim.tokenize.vq_config import TokenizerConfig
from medim.tokenize.vq_data import load_image, to_unit_range

FAST = ["--steps", "3", "--no-progress"]


def _lora_model():
    model = medim.build_model("tiny", lora=True, seed=0)
    with torch.no_grad():  # PEFT starts B at zero; make the adapters and the time modulation matter
        for name, p in model.named_parameters():
            if "lora_B" in name or name.startswith("adaln"):
                p.normal_(0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    save_checkpoint(medim.build_model("tiny", seed=0), root / "base")
    lora = _lora_model()
    save_checkpoint(lora, root / "lora")
    save_adapter(lora, root / "adapter-only")
    save_file(trainable_state(lora), str(root / "state.safetensors"))
    round_dir = root / "ckpt" / "round-0002"
    round_dir.mkdir(parents=True)
    save_file(trainable_state(lora), str(round_dir / "trainable.safetensors"))
    (root / "ckpt" / "LATEST").write_text("round-0002")
    torch.manual_seed(0)
    VQTokenizer(load_preset(TokenizerConfig, "tokenizer", "tiny")).save(root / "vq")
    torch.manual_seed(0)
    VQTokenizer(load_preset(TokenizerConfig, "tokenizer", "tiny", codebook_size=32)).save(root / "vq32")
    return root


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Synthetic held-out archives (MIMIC-CXR DICOM, PathGen PNG) and their prepared (training) folders."""
    root = tmp_path_factory.mktemp("synth")
    generate(SynthConfig(seed=0, image_size=32, scale=0.05), root / "synth", show_progress=False)
    held = root / "synth" / "heldout"
    prepare_archive("mimic-cxr", held / "mimic-cxr", root / "prep" / "cxr", image_size=32)
    prepare_archive("pathgen", held / "pathgen", root / "prep" / "pathology", image_size=32)
    return root


def _args(dirs: Path, task: str, out: Path, *extra: str, model: str = "base") -> list[str]:
    return [
        task,
        "--model",
        str(dirs / model),
        "--tokenizer",
        str(dirs / "vq"),
        "--out",
        str(out),
        *FAST,
        *extra,
    ]


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]


def test_pairs_write_images_jsonl_and_run_record(dirs, tmp_path):
    out = tmp_path / "pairs"
    extra = ["--n", "2", "--prompt", "the heart is", "--prompt", "no effusion", "--batch-size", "3"]
    assert main(_args(dirs, "pairs", out, *extra, "--modality", "cxr", "--cfg", "2")) == 0
    rows = _rows(out)
    assert [r["id"] for r in rows] == ["pair-0000", "pair-0001", "pair-0002", "pair-0003"]
    for row in rows:
        assert set(row) >= {"id", "task", "inputs", "report", "image", "seed", "sampler", "generated"}
        assert row["task"] == "pairs" and row["generated"] == ["image", "report"]
        assert row["sampler"] == {
            "steps": 3,
            "cfg": 2.0,
            "temperature": 1.0,
            "confidence_noise": 10.0,
            "autocast_bf16": True,
        }
        with Image.open(out / row["image"]) as png:
            assert png.mode == "L" and png.size == (32, 32)
    assert [r["inputs"]["prompt"] for r in rows] == ["the heart is"] * 2 + ["no effusion"] * 2
    assert rows[0]["report"].startswith("the heart is") and rows[2]["report"].startswith("no effusion")
    assert [r["seed"] for r in rows] == [0, 0, 0, 3] and [r["batch_size"] for r in rows] == [3, 3, 3, 1]
    run = json.loads((out / "run.json").read_text())
    assert run["model"] == str((dirs / "base").resolve()) and run["adapter"] is None
    assert run["status"] == "finished" and run["samples"] == 4 and run["merged"] is False
    assert run["sampler"]["cfg"] == 2.0 and run["inputs"]["prompts"] == ["the heart is", "no effusion"]
    assert run["command"][:2] == ["medim-generate", "pairs"]


def test_same_seed_same_outputs_and_other_seeds_differ(dirs, tmp_path):
    def pairs(name: str, seed: int):
        out = tmp_path / name
        assert main(_args(dirs, "pairs", out, "--n", "3", "--seed", str(seed))) == 0
        return [r["report"] for r in _rows(out)], [(out / r["image"]).read_bytes() for r in _rows(out)]

    first, again, other = pairs("a", 5), pairs("b", 5), pairs("c", 6)
    assert first == again
    assert first[0] != other[0] and first[1] != other[1]


def test_report_to_image_from_jsonl_and_text(dirs, tmp_path):
    reports = tmp_path / "reports.jsonl"
    lines = [
        {"id": "s1", "report": "Small left pleural effusion."},
        {"id": "p1", "report": "Sheets of lymphocytes.", "modality": "pathology"},
    ]
    reports.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "r2i"
    assert main(_args(dirs, "report-to-image", out, "--reports", str(reports), "--modality", "cxr")) == 0
    rows = _rows(out)
    assert [r["id"] for r in rows] == ["s1", "p1"] and [r["modality"] for r in rows] == ["cxr", "pathology"]
    assert rows[0]["inputs"] == {"text": lines[0]["report"], "source": f"{reports}:1", "truncated": False}
    assert rows[0]["report"] == "small left pleural effusion." and rows[0]["generated"] == ["image"]
    with Image.open(out / "images" / "s1.png") as a, Image.open(out / "images" / "p1.png") as b:
        assert (a.mode, b.mode) == ("L", "RGB")
    text_out = tmp_path / "text"
    assert main(_args(dirs, "report-to-image", text_out, "--text", "heart size is normal.")) == 0
    assert _rows(text_out)[0]["id"] == "text-0000" and _rows(text_out)[0]["inputs"]["source"] == "--text"


def _training_codes(vq, folder: Path) -> dict[str, torch.Tensor]:
    return encode_folder(vq, folder).as_dict()


def test_image_preprocessing_equals_the_training_path(dirs, synth):
    vq = load_tokenizer(dirs / "vq")
    for modality, archive in (("cxr", "mimic-cxr"), ("pathology", "pathgen")):
        folder = synth / "prep" / modality
        records = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines()]
        cached = _training_codes(vq, folder)
        for rec in records:
            source = synth / "synth" / "heldout" / archive / rec["source"]
            mine = prepare_image(source, 32)  # modality inferred: DICOM/gray -> cxr, colour PNG -> pathology
            assert mine.modality == modality
            trained = to_unit_range(torch.from_numpy(load_image(folder / rec["image"], 32)))
            assert torch.equal(mine.pixels, trained), source
            assert torch.equal(vq.encode(mine.pixels[None])[0], cached[rec["id"]])


def test_a_png_of_the_dicom_gives_the_same_codes(dirs, synth, tmp_path):
    from medim.data.dicom import decode_dicom

    dicom = next((synth / "synth" / "heldout" / "mimic-cxr").rglob("*.dcm"))
    png = tmp_path / "cxr.png"
    Image.fromarray(decode_dicom(dicom).pixels).save(png)
    a, b = prepare_image(dicom, 32), prepare_image(png, 32)
    assert a.modality == b.modality == "cxr" and torch.equal(a.pixels, b.pixels)


def test_image_to_report_from_dicom_and_png_files(dirs, synth, tmp_path):
    dicom = next((synth / "synth" / "heldout" / "mimic-cxr").rglob("*.dcm"))
    patches = synth / "synth" / "heldout" / "pathgen" / "patches"
    out = tmp_path / "i2r"
    assert main(_args(dirs, "image-to-report", out, "--images", str(dicom), str(patches))) == 0
    rows = _rows(out)
    assert rows[0]["id"] == dicom.stem and rows[0]["inputs"] == {"image": str(dicom), "modality": "cxr"}
    assert {r["inputs"]["modality"] for r in rows[1:]} == {"pathology"}
    assert len(rows) == 1 + len(list(patches.glob("*.png")))
    assert all(r["generated"] == ["report"] and isinstance(r["report"], str) for r in rows)


def _logits(model, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = model.vocab
    x = torch.randint(0, v.size - 1, (2, v.seq_len), generator=g)
    return model(x, torch.tensor([0.2, 1.5]))


def test_merged_lora_gives_the_same_logits():
    model = _lora_model()
    base_logits = _logits(medim.build_model("tiny", seed=0).eval())
    with torch.no_grad():
        before = _logits(model)
        assert merge_lora(model) == 14 and not is_lora(model)
        after = _logits(model)
    finite = torch.isfinite(before)
    assert torch.equal(finite, torch.isfinite(after))
    assert torch.allclose(before[finite], after[finite], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(before[finite], base_logits[finite], atol=1e-2)  # the adapters matter
    with pytest.raises(ValueError, match="no LoRA"):
        merge_lora(model)


@pytest.mark.parametrize("adapter", ["state.safetensors", "ckpt", "ckpt/round-0002", "adapter-only", "lora"])
def test_every_adapter_layout_loads_the_same_model(dirs, adapter):
    reference = load_model(dirs / "lora").model
    loaded = load_model(dirs / "base", adapter=dirs / adapter)
    assert loaded.lora and loaded.adapter is not None
    with torch.no_grad():
        assert torch.equal(_logits(loaded.model), _logits(reference))
    merged = load_model(dirs / "base", adapter=dirs / adapter, merge=True)
    assert merged.merged_layers == 14 and not is_lora(merged.model)
    with torch.no_grad():
        a, b = _logits(merged.model), _logits(reference)
    assert torch.allclose(a[torch.isfinite(a)], b[torch.isfinite(b)], atol=1e-5)


def test_adapter_resolution_names_the_layout(dirs):
    assert resolve_adapter(dirs / "ckpt").path == dirs / "ckpt" / "round-0002" / "trainable.safetensors"
    assert resolve_adapter(dirs / "lora").path == dirs / "lora" / "adapter"
    with pytest.raises(GenerateError, match="found none of"):
        resolve_adapter(dirs / "vq")


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_errors_name_the_file_or_setting(dirs, tmp_path, capsys):
    out = tmp_path / "o"
    missing = tmp_path / "nope"
    err = _error(
        capsys,
        ["pairs", "--model", str(missing), "--tokenizer", str(dirs / "vq"), "--out", str(out), "--n", "1"],
    )
    assert str(missing) in err and "medim_config.json" in err
    bad_vq = _args(dirs, "pairs", out, "--n", "1")
    bad_vq[bad_vq.index("--tokenizer") + 1] = str(dirs / "vq32")
    err = _error(capsys, bad_vq)
    assert "vq32" in err and "codebook of 32" in err and "expects 16 codes from 64" in err
    junk = tmp_path / "broken.png"
    junk.write_bytes(b"not a png")
    err = _error(capsys, _args(dirs, "image-to-report", out, "--images", str(junk)))
    assert str(junk) in err and "unreadable image" in err
    broken_dcm = tmp_path / "broken.dcm"
    broken_dcm.write_bytes(b"\0" * 10)
    assert str(broken_dcm) in _error(capsys, _args(dirs, "image-to-report", out, "--images", str(broken_dcm)))
    reports = tmp_path / "r.jsonl"
    reports.write_text('{"id": "a", "report": "ok"}\n{"id": "b", "report": "  "}\n')
    err = _error(capsys, _args(dirs, "report-to-image", out, "--reports", str(reports)))
    assert f"{reports}:2: empty report" in err
    assert "--text #1: empty report" in _error(capsys, _args(dirs, "report-to-image", out, "--text", ""))
    assert "sampler.steps=0 is invalid" in _error(
        capsys, [*_args(dirs, "pairs", out, "--n", "1"), "--steps", "0"]
    )
    wrong = tmp_path / "wrong.safetensors"
    save_file({"x": torch.zeros(1)}, str(wrong))
    err = _error(capsys, _args(dirs, "pairs", out, "--n", "1", "--adapter", str(wrong)))
    assert f"--adapter {wrong}" in err and "does not fit" in err
    assert "--merge" in _error(capsys, _args(dirs, "pairs", out, "--n", "1", "--merge"))
    assert not out.exists()  # nothing written before the inputs were checked


def test_an_earlier_run_is_kept_unless_overwrite(dirs, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(dirs, "pairs", out, "--n", "1")) == 0
    assert "--overwrite" in _error(capsys, _args(dirs, "pairs", out, "--n", "1"))
    assert main(_args(dirs, "pairs", out, "--n", "2", "--overwrite")) == 0
    assert len(_rows(out)) == 2 and len(list((out / "images").iterdir())) == 2


def test_merge_through_the_cli_records_it(dirs, tmp_path):
    out = tmp_path / "m"
    assert main(_args(dirs, "pairs", out, "--n", "1", "--merge", model="lora")) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["merged"] is True and run["merged_layers"] == 14 and run["lora"] is True


def test_unsafe_ids_are_rejected(dirs, tmp_path, capsys):
    reports = tmp_path / "r.jsonl"
    reports.write_text('{"id": "../x", "report": "ok"}\n')
    assert "id '../x' is invalid" in _error(
        capsys, _args(dirs, "report-to-image", tmp_path / "o", "--reports", str(reports))
    )
