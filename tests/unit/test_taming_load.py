"""Loading taming-transformers / Chameleon VQGAN checkpoints (vqgan.ckpt + vqgan.yaml)."""

import pytest
import torch
import torch.nn.functional as F
import yaml

from medim.config import load_preset
from medim.tokenize.cli import main
from medim.tokenize.taming import config_from_taming_yaml, load_taming
from medim.tokenize.vq import VQTokenizer, load_tokenizer
from medim.tokenize.vq_config import TokenizerConfig
from medim.tokenize.vq_modules import AttnBlock, Downsample

DDCONFIG = {
    "double_z": False,
    "z_channels": 8,
    "resolution": 16,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [8],
    "dropout": 0.0,
}


def write_yaml(path, ddconfig=DDCONFIG, embed_dim=4, n_embed=16):
    doc = {
        "model": {
            "target": "taming.models.vqgan.VQModel",
            "params": {
                "embed_dim": embed_dim,
                "n_embed": n_embed,
                "ddconfig": ddconfig,
                "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"},
            },
        }
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def random_reference(seed=0):
    """A taming-style VQGAN with random weights (GroupNorm affine and biases randomised too)."""
    cfg = TokenizerConfig(
        resolution=16,
        ch=32,
        ch_mult=[1, 2],
        num_res_blocks=1,
        attn_resolutions=[8],
        z_channels=8,
        embed_dim=4,
        codebook_size=16,
        l2_normalize=False,
        norm_groups=32,
    )
    torch.manual_seed(seed)
    model = VQTokenizer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model.eval()


def write_ckpt(path, state):
    """Lightning-style checkpoint as taming writes it, with training-only loss.* tensors."""
    full = dict(state)
    full["loss.discriminator.main.0.weight"] = torch.randn(64, 3, 4, 4)
    full["loss.perceptual_loss.net.slice1.0.weight"] = torch.randn(64, 3, 3, 3)
    torch.save({"epoch": 3, "global_step": 1234, "state_dict": full}, path)
    return path


def test_our_names_are_taming_names():
    keys = set(random_reference().state_dict())
    expected = {
        "encoder.conv_in.weight",
        "encoder.down.0.block.0.norm1.weight",
        "encoder.down.0.block.0.conv1.weight",
        "encoder.down.0.downsample.conv.weight",
        "encoder.down.1.block.0.nin_shortcut.weight",
        "encoder.down.1.attn.0.q.weight",
        "encoder.down.1.attn.0.proj_out.bias",
        "encoder.mid.block_1.conv2.weight",
        "encoder.mid.attn_1.k.weight",
        "encoder.mid.block_2.norm2.bias",
        "encoder.norm_out.weight",
        "encoder.conv_out.weight",
        "quant_conv.weight",
        "quantize.embedding.weight",
        "post_quant_conv.weight",
        "decoder.conv_in.weight",
        "decoder.mid.attn_1.v.weight",
        "decoder.up.1.block.1.conv2.weight",
        "decoder.up.1.attn.1.norm.weight",
        "decoder.up.1.upsample.conv.weight",
        "decoder.up.0.block.0.nin_shortcut.weight",
        "decoder.conv_out.bias",
    }
    assert expected <= keys
    assert not any("downsample" in k for k in keys if k.startswith("encoder.down.1."))
    assert not any("upsample" in k for k in keys if k.startswith("decoder.up.0."))


def test_attention_and_downsample_match_taming_formulas():
    torch.manual_seed(0)
    attn = AttnBlock(32, groups=32)
    x = torch.randn(2, 32, 4, 4)
    h = attn.norm(x)
    q, k, v = attn.q(h), attn.k(h), attn.v(h)
    b, c, hh, ww = q.shape
    w_ = torch.bmm(q.reshape(b, c, -1).permute(0, 2, 1), k.reshape(b, c, -1)) * c**-0.5
    w_ = torch.softmax(w_, dim=2)
    ref = x + attn.proj_out(torch.bmm(v.reshape(b, c, -1), w_.permute(0, 2, 1)).reshape(b, c, hh, ww))
    assert torch.allclose(attn(x), ref, atol=1e-5)
    down = Downsample(8)
    y = torch.randn(1, 8, 6, 6)
    assert torch.allclose(down(y), down.conv(F.pad(y, (0, 1, 0, 1))))
    assert down(y).shape == (1, 8, 3, 3)


def test_taming_round_trip_same_outputs(tmp_path):
    ref = random_reference()
    ckpt = write_ckpt(tmp_path / "vqgan.ckpt", ref.state_dict())
    cfg_yaml = write_yaml(tmp_path / "vqgan.yaml")
    loaded = load_taming(ckpt, cfg_yaml)
    assert loaded.config.architecture() == ref.config.architecture()
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    codes = ref.encode(images)
    assert codes.shape == (3, 64)
    assert torch.equal(loaded.encode(images), codes)
    assert torch.equal(loaded.decode(codes), ref.decode(codes))
    # load_tokenizer finds vqgan.ckpt + vqgan.yaml in a folder, and import-taming's output loads identically
    assert torch.equal(load_tokenizer(tmp_path).encode(images), codes)
    argv = ["import-taming", "--ckpt", str(ckpt), "--yaml", str(cfg_yaml), "--out", str(tmp_path / "ours")]
    assert main(argv) == 0
    imported = load_tokenizer(tmp_path / "ours")
    assert torch.equal(imported.encode(images), codes)
    assert torch.equal(imported.decode(codes), ref.decode(codes))


def test_shape_mismatch_and_missing_key_are_named(tmp_path):
    state = random_reference().state_dict()
    state["quantize.embedding.weight"] = torch.randn(17, 4)
    bad = write_ckpt(tmp_path / "bad.ckpt", state)
    cfg_yaml = write_yaml(tmp_path / "vqgan.yaml")
    with pytest.raises(
        ValueError, match=r"shape mismatch for quantize.embedding.weight: file \(17, 4\)"
    ) as err:
        load_taming(bad, cfg_yaml)
    assert "bad.ckpt" in str(err.value)
    state = random_reference().state_dict()
    del state["decoder.up.1.upsample.conv.weight"]
    missing = write_ckpt(tmp_path / "missing.ckpt", state)
    with pytest.raises(ValueError, match=r"missing keys \['decoder.up.1.upsample.conv.weight'\]"):
        load_taming(missing, cfg_yaml)


def test_bad_yaml_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="double_z"):
        load_taming(tmp_path / "x.ckpt", write_yaml(tmp_path / "a.yaml", {**DDCONFIG, "double_z": True}))
    with pytest.raises(ValueError, match="missing setting 'ch_mult'"):
        cfg = {k: v for k, v in DDCONFIG.items() if k != "ch_mult"}
        config_from_taming_yaml(write_yaml(tmp_path / "b.yaml", cfg))
    with pytest.raises(ValueError, match="tokenizer.resolution=17"):
        config_from_taming_yaml(write_yaml(tmp_path / "c.yaml", {**DDCONFIG, "resolution": 17}))


class NotATensor:
    """An arbitrary class: a weights-only load must refuse to rebuild it."""


def test_refuses_non_tensor_pickles(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": NotATensor()}}, path)
    with pytest.raises(ValueError, match="weights-only"):
        load_taming(path, write_yaml(tmp_path / "vqgan.yaml"))


def test_chameleon_yaml_matches_liquid_preset(tmp_path):
    chameleon = {
        "double_z": False,
        "z_channels": 256,
        "resolution": 512,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 128,
        "ch_mult": [1, 1, 2, 2, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [],
        "dropout": 0.0,
        "attn_type": "vanilla",
    }
    cfg = config_from_taming_yaml(write_yaml(tmp_path / "vqgan.yaml", chameleon, embed_dim=256, n_embed=8192))
    preset = load_preset(TokenizerConfig, "tokenizer", "liquid-7b")
    assert cfg.architecture() == preset.architecture()
    assert cfg.image_tokens == 1024
