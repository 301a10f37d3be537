import pytest
import torch

import medim
from medim.config import ConfigError
from medim.diffusion import sigma_of
from medim.model.backbone import bidirectional_mask
from medim.model.checkpoint import load_adapter, load_checkpoint, save_adapter, save_checkpoint
from medim.model.lora import apply_lora, load_trainable_state, trainable_names, trainable_state

FAMILIES = ["llama", "gemma", "qwen2"]


def _tiny(family="llama", attn="sdpa", **kw):
    return medim.build_model("tiny", family=family, attn_implementation=attn, seed=0, **kw).eval()


def _random_x(model, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    v = model.vocab
    x = torch.randint(0, v.text_size, (batch, v.seq_len), generator=g)
    x[:, v.image_slice] = v.image_offset + torch.randint(
        0, v.codebook_size, (batch, v.image_tokens), generator=g
    )
    return x


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_bidirectional_last_token_changes_first_position(family, attn):
    model = _tiny(family, attn)
    x = _random_x(model)
    x2 = x.clone()
    x2[:, -1] = (x2[:, -1] + 1) % model.vocab.text_size
    sigma = torch.full((2,), 0.5)
    with torch.no_grad():
        # position 0 is the structural <boi>; its hidden state and the first image position's logits both move
        assert (model.hidden_states(x, sigma)[:, 0] - model.hidden_states(x2, sigma)[:, 0]).abs().max() > 1e-5
        first_image = model.vocab.image_slice.start
        delta = model(x, sigma)[:, first_image] - model(x2, sigma)[:, first_image]
        assert delta.nan_to_num().abs().max() > 1e-5


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_keys_are_hidden(attn):
    model = _tiny("llama", attn)
    x = _random_x(model, batch=1)
    valid = torch.ones_like(x, dtype=torch.bool)
    valid[:, -3:] = False
    sigma = torch.tensor([0.3])
    x2 = x.clone()
    x2[:, -1] = (x2[:, -1] + 7) % model.vocab.text_size
    h1 = model.hidden_states(x, sigma, valid)[:, :-3]
    h2 = model.hidden_states(x2, sigma, valid)[:, :-3]
    torch.testing.assert_close(h1, h2)


def test_bidirectional_mask_values():
    valid = torch.tensor([[True, True, False]])
    assert bidirectional_mask(valid).shape == (1, 1, 3, 3)
    assert bidirectional_mask(valid)[0, 0, 2].tolist() == [True, True, False]
    add = bidirectional_mask(valid, additive_dtype=torch.float32)
    assert add[0, 0, 0, 0] == 0 and add[0, 0, 0, 2] == torch.finfo(torch.float32).min


def test_logits_respect_regions():
    model = _tiny()
    v = model.vocab
    logits = model(_random_x(model), torch.full((2,), 1.0))
    assert logits.shape == (2, v.seq_len, v.size)
    finite = torch.isfinite(logits[0])
    assert finite[v.image_slice][:, v.image_offset :].all()
    assert not finite[v.image_slice][:, : v.image_offset].any()
    assert not finite[v.text_slice][:, v.image_offset :].any()
    assert finite[v.text_slice][:, v.eos].all() and finite[v.text_slice][:, v.pad].all()
    assert not finite[:, v.mask].any()


@pytest.mark.parametrize("adaln", ["per_layer", "single"])
def test_pretrained_function_preserved_at_init(tmp_path, adaln):
    """MeDiM built on a saved backbone computes that backbone's (bidirectional) function at any sigma."""
    from transformers import AutoModelForCausalLM

    donor = _tiny("gemma")
    donor.backbone.save_pretrained(tmp_path / "hf")
    model = medim.build_model(
        "tiny", family="gemma", pretrained_path=str(tmp_path / "hf"), adaln=adaln, seed=1
    ).eval()
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="sdpa").eval()
    x = torch.randint(0, model.vocab.text_size, (2, model.vocab.seq_len))
    mask = bidirectional_mask(torch.ones_like(x, dtype=torch.bool))
    with torch.no_grad():
        ref = hf.model(input_ids=x, attention_mask=mask).last_hidden_state
        for s in (0.01, 1.0, 6.0):
            got = model.hidden_states(x, torch.full((2,), s))
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_time_sensitivity_after_one_step():
    model = _tiny().train()
    x = _random_x(model)
    with torch.no_grad():  # zero-initialised modulation: sigma has no effect at init
        assert torch.equal(model(x, torch.full((2,), 0.1)), model(x, torch.full((2,), 3.0)))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    loss = model(x, torch.tensor([0.2, 2.0])).logsumexp(-1).mean()
    loss.backward()
    assert model.adaln.proj[0].weight.grad.abs().sum() > 0
    opt.step()
    with torch.no_grad():
        a = model(x, torch.full((2,), 0.1))
        b = model(x, torch.full((2,), 3.0))
    assert (a - b).nan_to_num().abs().max() > 1e-5


def test_adaln_single_is_parameter_light():
    per_layer = _tiny(adaln="per_layer")
    single = _tiny(adaln="single")
    n = lambda m: sum(p.numel() for p in m.adaln.parameters())  # noqa: E731
    h, layers = 64, 2
    assert n(per_layer) == layers * (h * 6 * h + 6 * h)
    assert n(single) == h * 6 * h + 6 * h + layers * 6 * h


def test_lora_trainable_set_and_only_it_changes():
    model = apply_lora(_tiny().train())
    names = trainable_names(model)
    assert names and all(
        "lora_" in n or n.startswith(("time.", "adaln.", "new_embed.", "new_head.")) for n in names
    )
    assert any(".q_proj.lora_A." in n for n in names) and any(".down_proj.lora_B." in n for n in names)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = _random_x(model)
    model(x, torch.tensor([0.5, 1.5])).logsumexp(-1).mean().backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(names)


def test_lora_without_new_rows_freezes_them():
    model = apply_lora(_tiny(train_new_token_rows=False))
    assert not any(n.startswith("new_") for n in trainable_names(model))


def test_trainable_state_round_trip_and_errors():
    a = apply_lora(_tiny())
    b = apply_lora(medim.build_model("tiny", seed=5))
    state = trainable_state(a)
    load_trainable_state(b, state)
    assert all(torch.equal(v, trainable_state(b)[k]) for k, v in state.items())
    with pytest.raises(KeyError, match="unexpected"):
        load_trainable_state(b, {**state, "backbone.lm_head.weight": torch.zeros(1)})
    key = next(iter(state))
    with pytest.raises(ValueError, match=key):
        load_trainable_state(b, {**state, key: torch.zeros(3)})


@pytest.mark.parametrize("lora", [False, True])
def test_checkpoint_round_trip_identical_logits(tmp_path, lora):
    model = _tiny(adaln="single")
    if lora:
        apply_lora(model)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.01 * torch.randn_like(p))
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt").eval()
    x = _random_x(model)
    sigma = sigma_of(torch.tensor([0.3, 0.9]), 1e-3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, sigma), model.eval()(x, sigma), rtol=0, atol=0)


def test_adapter_is_peft_loadable(tmp_path):
    from peft import PeftModel

    model = apply_lora(_tiny())
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.1)
    save_adapter(model, tmp_path / "adapter")
    base = _tiny().backbone
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    ours = {k.removeprefix("backbone."): v for k, v in trainable_state(model).items() if "lora_" in k}
    theirs = dict(peft_model.base_model.model.named_parameters())
    for k, v in ours.items():
        torch.testing.assert_close(theirs[k], v)
    other = apply_lora(medim.build_model("tiny", seed=9))
    load_adapter(other, tmp_path / "adapter")
    for k, v in trainable_state(model).items():
        torch.testing.assert_close(trainable_state(other)[k], v)


def test_liquid_preset_shapes_on_tiny_random_gemma(tmp_path):
    """The paper's recipe (Gemma body, first 10 layers, 8192 codes, 1024 + 256 tokens) on a tiny random Gemma."""
    from transformers import GemmaConfig, GemmaForCausalLM

    hf = GemmaForCausalLM(
        GemmaConfig(
            vocab_size=300,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=12,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=2048,
        )
    )
    hf.save_pretrained(tmp_path / "liquid")
    model = medim.build_model("liquid-7b", pretrained_path=str(tmp_path / "liquid"), dtype="float32").eval()
    v = model.vocab
    assert model.n_layers == 10 and model.backbone.config.num_hidden_layers == 10
    assert (v.text_size, v.codebook_size, v.image_tokens, v.text_tokens) == (300, 8192, 1024, 256)
    assert model.cfg.adaln == "single"
    x = torch.full((1, v.seq_len), v.mask)
    with torch.no_grad():
        logits = model(x, torch.ones(1))
    assert logits.shape == (1, 1282, 300 + 5 + 8192)
    with pytest.raises(ConfigError, match="keep_layers"):
        medim.build_model("liquid-7b", pretrained_path=str(tmp_path / "liquid"), keep_layers=13)
    with pytest.raises(ConfigError, match="no config.json"):
        medim.build_model("liquid-7b", pretrained_path=str(tmp_path / "missing"))


def test_pretrained_backbone_uses_its_own_tokenizer(tmp_path):
    from transformers import PreTrainedTokenizerFast

    from medim.model.factory import text_tokenizer
    from medim.tokenize.text import BUILTIN_PATH

    donor = _tiny("gemma")
    donor.backbone.save_pretrained(tmp_path / "hf")
    PreTrainedTokenizerFast(tokenizer_file=str(BUILTIN_PATH), unk_token="<unk>").save_pretrained(
        tmp_path / "hf"
    )
    model = medim.build_model("tiny", family="gemma", pretrained_path=str(tmp_path / "hf"))
    tok = text_tokenizer(model.cfg)
    assert tok.size == model.vocab.text_size == donor.vocab.text_size
    ids = tok.encode("no pleural effusion.")
    assert ids and max(ids) < tok.size and tok.decode(ids) == "no pleural effusion."
    with pytest.raises(ConfigError, match="family"):
        medim.build_model("tiny", family="llama", pretrained_path=str(tmp_path / "hf"))


def test_ablations_causal_attention_and_no_time_input():
    causal = _tiny(attention="causal")
    x = _random_x(causal)
    x2 = x.clone()
    x2[:, -1] = (x2[:, -1] + 1) % causal.vocab.text_size
    sigma = torch.full((2,), 0.5)
    with torch.no_grad():  # causal: the last token cannot reach earlier positions
        torch.testing.assert_close(
            causal.hidden_states(x, sigma)[:, :-1], causal.hidden_states(x2, sigma)[:, :-1]
        )
    timeless = _tiny(time_input="none")
    assert timeless.time is None and timeless.adaln is None
    with torch.no_grad():
        assert torch.equal(timeless(x, torch.full((2,), 0.1)), timeless(x, torch.full((2,), 5.0)))
    names = trainable_names(apply_lora(timeless))
    assert names and not any(n.startswith(("time.", "adaln.")) for n in names)
