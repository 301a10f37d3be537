"""`medim-tokenizer` on small prepared folders: train + report, resume, code caches, errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from medim.config import load_preset
from medim.tokenize.cli import main
from medim.tokenize.vq import load_tokenizer
from medim.tokenize.vq_cache import encode_folder, load_code_cache
from medim.tokenize.vq_config import TokenizerConfig
from medim.tokenize.vq_data import load_image, to_unit_range
from medim.tokenize.vq_train import train_tokenizer


def smooth_shapes(rng: np.random.Generator, size: int, channels: int) -> np.ndarray:
    """uint8 [size,size,channels]: a gradient plus a few soft discs."""
    y, x = np.mgrid[0:size, 0:size] / size
    img = rng.random(channels) * 0.4 * (x + y)[..., None]
    for _ in range(3):
        cx, cy, r = rng.random(), rng.random(), 0.1 + 0.25 * rng.random()
        disc = 1 / (1 + np.exp(-(r - np.hypot(x - cx, y - cy)) * 40))
        img = img + rng.random(channels) * disc[..., None]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_prepared(folder, *, n_train=6, n_heldout=2, modalities=("cxr", "pathology"), seed=0):
    """A prepared folder as `medim-data prepare` writes it: manifest.jsonl + PNGs (CXR "L", pathology RGB)."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for modality in modalities:
        for i in range(n_train + n_heldout):
            name = f"images/{modality}-{i}.png"
            if modality == "cxr":
                Image.fromarray(smooth_shapes(rng, 48, 1)[..., 0], "L").save(folder / name)
            else:
                Image.fromarray(smooth_shapes(rng, 40, 3), "RGB").save(folder / name)
            split = "train" if i < n_train else ("validate", "test")[i % 2]
            row = {
                "id": f"{modality}-{i}",
                "split": split,
                "image": name,
                "report": "x.",
                "modality": modality,
                "source": name,
            }
            lines.append(json.dumps(row))
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


def test_cli_train_writes_checkpoint_report_and_grid(tmp_path, capsys):
    data = write_prepared(tmp_path / "prep")
    out = tmp_path / "tok"
    code, summary, err = run_cli(
        capsys, "train", "--data", data, "--out", out, "--preset", "tiny", "--steps", 4, "--no-progress"
    )
    assert code == 0, err
    assert summary["step"] == 4 and summary["image_tokens"] == 16 and summary["codebook_size"] == 64
    report = json.loads((out / "reconstruction.json").read_text())
    for modality in ("cxr", "pathology"):
        entry = report[modality]
        assert {"psnr", "ssim", "codebook_usage", "codebook_perplexity", "n_images"} <= set(entry)
        assert entry["n_images"] == 2 and 0 <= entry["codebook_usage"] <= 1 and -1 <= entry["ssim"] <= 1
    assert report["image_tokens"] == 16 and report["step"] == 4
    grid = Image.open(out / "reconstruction.png")
    assert grid.size[0] > 2 * 32 and grid.size[1] > 4 * 32  # 2 modalities x (original, reconstruction) rows
    assert {p.name for p in out.iterdir()} >= {
        "tokenizer.safetensors",
        "tokenizer.json",
        "train_state.safetensors",
    }
    assert not [p for p in out.iterdir() if p.suffix in (".pt", ".pth", ".pkl", ".ckpt")]
    assert load_tokenizer(out).encode(torch.zeros(1, 1, 32, 32)).shape == (1, 16)


def test_resume_continues_from_the_step_and_matches_uninterrupted_run(tmp_path):
    data = [write_prepared(tmp_path / "prep", modalities=("pathology",))]
    full_cfg = load_preset(
        TokenizerConfig, "tokenizer", "tiny", train={"steps": 8, "threads": 1, "restart_every": 3}
    )
    half_cfg = load_preset(
        TokenizerConfig, "tokenizer", "tiny", train={"steps": 4, "threads": 1, "restart_every": 3}
    )
    straight = train_tokenizer(full_cfg, data, tmp_path / "straight", progress=False)
    first = train_tokenizer(half_cfg, data, tmp_path / "resumed", progress=False)
    assert (first.step, first.start_step) == (4, 0)
    second = train_tokenizer(full_cfg, data, tmp_path / "resumed", progress=False)
    assert (second.step, second.start_step) == (8, 4)
    a = load_file(str(tmp_path / "straight" / "tokenizer.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "tokenizer.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight.loss == pytest.approx(second.loss)


def test_resume_with_other_architecture_is_refused(tmp_path):
    data = [write_prepared(tmp_path / "prep", modalities=("cxr",))]
    train_tokenizer(
        load_preset(TokenizerConfig, "tokenizer", "tiny", train={"steps": 2}),
        data,
        tmp_path / "o",
        progress=False,
    )
    other = load_preset(TokenizerConfig, "tokenizer", "tiny", codebook_size=32, train={"steps": 4})
    with pytest.raises(ValueError, match="different tokenizer architecture"):
        train_tokenizer(other, data, tmp_path / "o", progress=False)


def test_encode_writes_and_reuses_code_cache(tmp_path, capsys):
    data = write_prepared(tmp_path / "prep")
    tok = tmp_path / "tok"
    assert (
        run_cli(
            capsys, "train", "--data", data, "--out", tok, "--preset", "tiny", "--steps", 2, "--no-progress"
        )[0]
        == 0
    )
    code, summary, err = run_cli(capsys, "encode", "--tokenizer", tok, "--data", data, "--no-progress")
    assert code == 0, err
    tokenizer = load_tokenizer(tok)
    path = data / f"codes-{tokenizer.fingerprint()}.safetensors"
    assert summary["caches"] == [{"path": str(path), "images": 16}]
    cache = load_code_cache(path)
    assert cache.codes.shape == (16, 16) and cache.fingerprint == tokenizer.fingerprint()
    expected = tokenizer.encode(
        to_unit_range(torch.from_numpy(load_image(data / "images/pathology-3.png", 32)))[None]
    )
    assert torch.equal(cache.get("pathology-3"), expected[0])
    assert set(cache.as_dict()) == set(cache.ids)
    stamp = path.stat().st_mtime_ns
    assert encode_folder(tokenizer, data).path == path and path.stat().st_mtime_ns == stamp  # re-used
    write_prepared(data, n_train=7)  # the manifest changed: the cache is rebuilt
    assert len(encode_folder(tokenizer, data).ids) == 18


def test_report_and_import_taming_commands(tmp_path, capsys):
    data = write_prepared(tmp_path / "prep", modalities=("cxr",))
    tok = tmp_path / "tok"
    assert (
        run_cli(
            capsys, "train", "--data", data, "--out", tok, "--preset", "tiny", "--steps", 1, "--no-progress"
        )[0]
        == 0
    )
    code, summary, _ = run_cli(
        capsys, "report", "--tokenizer", tok, "--data", data, "--out", tmp_path / "rep"
    )
    assert code == 0 and set(summary["modalities"]) == {"cxr"} and summary["step"] == 1
    assert (tmp_path / "rep" / "reconstruction.json").is_file() and (
        tmp_path / "rep" / "reconstruction.png"
    ).is_file()
    model = load_tokenizer(tok)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "vqgan.ckpt")
    cfg = model.config
    ddconfig = {
        "double_z": False,
        "z_channels": cfg.z_channels,
        "resolution": cfg.resolution,
        "in_channels": 3,
        "out_ch": 3,
        "ch": cfg.ch,
        "ch_mult": cfg.ch_mult,
        "num_res_blocks": cfg.num_res_blocks,
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    params = {"embed_dim": cfg.embed_dim, "n_embed": cfg.codebook_size, "ddconfig": ddconfig}
    (tmp_path / "vqgan.yaml").write_text(json.dumps({"model": {"params": params}}))  # JSON is valid YAML
    code, _, err = run_cli(
        capsys,
        "import-taming",
        "--ckpt",
        tmp_path / "vqgan.ckpt",
        "--yaml",
        tmp_path / "vqgan.yaml",
        "--out",
        tmp_path / "imp",
    )
    # the tiny preset uses 8 GroupNorm groups and a cosine codebook; taming's fixed 32 groups cannot hold 16 channels
    assert code == 2 and "tokenizer.norm_groups=32" in err


BAD_LINES = [
    ({"id": "a", "split": "train", "image": "a.png", "modality": "ct"}, "modality='ct' is invalid"),
    ({"id": "a", "split": "dev", "image": "a.png", "modality": "cxr"}, "split='dev' is invalid"),
    ({"id": "a", "split": "train", "modality": "cxr"}, "'image'"),
]


@pytest.mark.parametrize(
    ("manifest", "needle"),
    [(json.dumps({"report": "", "source": "", **row}) + "\n", needle) for row, needle in BAD_LINES]
    + [("not json\n", "")],
)
def test_bad_manifest_lines_are_named(tmp_path, capsys, manifest, needle):
    (tmp_path / "prep").mkdir()
    (tmp_path / "prep" / "manifest.jsonl").write_text(manifest)
    code, _, err = run_cli(
        capsys,
        "train",
        "--data",
        tmp_path / "prep",
        "--out",
        tmp_path / "o",
        "--preset",
        "tiny",
        "--no-progress",
    )
    assert code == 2 and "manifest.jsonl:1: malformed manifest line" in err and needle in err


def test_missing_folder_and_missing_heldout_are_errors(tmp_path, capsys):
    code, _, err = run_cli(
        capsys, "train", "--data", tmp_path / "nowhere", "--out", tmp_path / "o", "--preset", "tiny"
    )
    assert code == 2 and "nowhere/manifest.jsonl: manifest not found" in err
    data = write_prepared(tmp_path / "prep", n_heldout=0)
    code, _, err = run_cli(capsys, "train", "--data", data, "--out", tmp_path / "o", "--preset", "tiny")
    assert code == 2 and "no held-out images" in err
    code, _, err = run_cli(
        capsys, "train", "--data", data, "--out", tmp_path / "o", "--preset", "tiny", "--steps", 0
    )
    assert code == 2 and "tokenizer.train.steps=0" in err
