import pytest

from medim.config import ConfigError, DiffusionConfig, LoraConfig, ModelConfig, load_preset, presets


def test_presets_exist():
    assert {"tiny", "small", "liquid-7b"} <= set(presets("model"))


def test_small_preset_loads_and_has_fixed_layout():
    cfg = load_preset(ModelConfig, "model", "small")
    assert cfg.seq_len == cfg.image_tokens + cfg.text_tokens + 2
    assert isinstance(cfg.lora, LoraConfig)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"family": "gpt2"}, "model.family='gpt2'"),
        ({"hidden_size": 0}, "model.hidden_size=0"),
        ({"hidden_size": 30, "num_heads": 4}, "multiple of model.num_heads"),
        ({"adaln": "global"}, "model.adaln"),
    ],
)
def test_bad_model_values_name_the_setting(kwargs, needle):
    with pytest.raises(ConfigError, match="invalid|multiple") as err:
        ModelConfig(**kwargs)
    assert needle in str(err.value)


def test_bad_diffusion_values_name_the_setting():
    with pytest.raises(ConfigError, match=r"diffusion.eps=1.5 is invalid: allowed \(0, 1\)"):
        DiffusionConfig(eps=1.5)
    with pytest.raises(ConfigError, match="positive sum"):
        DiffusionConfig(joint=0, text_to_image=0, image_to_text=0, prompt=0)


def test_task_probs_normalised():
    probs = DiffusionConfig(joint=2, text_to_image=1, image_to_text=1, prompt=0).task_probs
    assert probs == pytest.approx([0.5, 0.25, 0.25, 0.0])


def test_unknown_override_and_wrong_type_rejected():
    with pytest.raises(ConfigError, match="unknown model setting"):
        load_preset(ModelConfig, "model", "tiny", hidden=3)
    with pytest.raises(ConfigError, match="hidden_size"):
        load_preset(ModelConfig, "model", "tiny", hidden_size="wide")
    with pytest.raises(ConfigError, match="not found"):
        load_preset(ModelConfig, "model", "huge")


def test_hydra_compose_with_overrides():
    from medim.config import RootConfig, compose

    cfg = compose(["model=tiny", "train=tiny", "train.steps=7", "model.adaln=single"])
    assert isinstance(cfg, RootConfig)
    assert cfg.model.hidden_size == 64 and cfg.model.adaln == "single" and cfg.train.steps == 7
    assert compose().model.hidden_size == 256  # defaults: small


def test_hydra_compose_rejects_bad_values():
    from medim.config import compose

    with pytest.raises(ConfigError, match=r"model.family='gpt2' is invalid"):
        compose(["model.family=gpt2"])
    with pytest.raises(ConfigError, match="overrides"):
        compose(["model=huge"])


@pytest.mark.parametrize("preset", ["tiny", "small", "small-f4", "liquid-7b"])
def test_model_presets_name_a_matching_tokenizer(preset):
    from medim.tokenize.vq_config import TokenizerConfig

    model = load_preset(ModelConfig, "model", preset, pretrained_path=None)
    vq = load_preset(TokenizerConfig, "tokenizer", model.tokenizer)
    assert (vq.image_tokens, vq.codebook_size) == (model.image_tokens, model.codebook_size)
