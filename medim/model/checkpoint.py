"""Save and load MeDiM models exactly (safetensors + JSON configs; never pickle).

A model folder holds ``medim_config.json`` (ModelConfig, vocabulary, whether LoRA is applied),
``backbone_config.json`` (the HF config, after layer truncation), ``model.safetensors`` (every tensor), and for a
LoRA model ``adapter/``: the adapters in PEFT format (``adapter_config.json`` + ``adapter_model.safetensors``, keys
``base_model.model.<module>.lora_A.weight`` loadable with ``peft.PeftModel.from_pretrained`` onto the backbone)
and ``medim_modules.safetensors`` with the other trainable tensors (time embedding, AdaLN, new token rows).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from safetensors.torch import load_file, load_model, save_file, save_model
from transformers import AutoConfig, AutoModelForCausalLM

from medim.config import ModelConfig, build_config
from medim.model.attention import hf_attn_implementation
from medim.model.lora import apply_lora, is_lora, load_trainable_state, peft_config, trainable_state
from medim.model.medim import MeDiM
from medim.tokenize.vocab import Vocab

FORMAT = 1
ADAPTER = "adapter"
_PEFT_PREFIX = "base_model.model."


def save_checkpoint(model: MeDiM, path: Path) -> None:
    """Write the whole model to the folder ``path`` (created if needed)."""
    path.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "model": dataclasses.asdict(model.cfg),
        "vocab": dataclasses.asdict(model.vocab),
        "lora": is_lora(model),
    }
    (path / "medim_config.json").write_text(json.dumps(meta, indent=2))
    (path / "backbone_config.json").write_text(model.backbone.config.to_json_string())
    save_model(model, str(path / "model.safetensors"))
    if is_lora(model):
        save_adapter(model, path / ADAPTER)


def load_checkpoint(path: Path) -> MeDiM:
    """Rebuild the model saved in ``path``; its logits equal the saved model's."""
    meta_file = path / "medim_config.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{meta_file} not found: not a medim model folder")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_file}: format {meta.get('format')!r}, this medim reads format {FORMAT}")
    cfg = build_config(ModelConfig, meta["model"], where=str(meta_file))
    hf = json.loads((path / "backbone_config.json").read_text())
    hf_config = AutoConfig.for_model(hf.pop("model_type"), **hf)
    backbone = AutoModelForCausalLM.from_config(
        hf_config, attn_implementation=hf_attn_implementation(cfg.attn_implementation)
    )
    model = MeDiM(cfg, Vocab(**meta["vocab"]), backbone)
    if meta["lora"]:
        apply_lora(model)
    load_model(model, str(path / "model.safetensors"), strict=True)
    return model


def _peft_key(name: str) -> str:
    """``backbone.model.layers.0.self_attn.q_proj.lora_A.default.weight`` -> PEFT file key."""
    return _PEFT_PREFIX + name.removeprefix("backbone.").replace(".default.", ".")


def save_adapter(model: MeDiM, path: Path) -> None:
    """Write the trainable state: LoRA in PEFT format plus medim's own trainable modules."""
    path.mkdir(parents=True, exist_ok=True)
    state = trainable_state(model)
    peft_config(model.cfg.lora).save_pretrained(str(path))
    lora = {_peft_key(k): v.contiguous() for k, v in state.items() if k.startswith("backbone.")}
    save_file(lora, str(path / "adapter_model.safetensors"))
    own = {k: v.contiguous() for k, v in state.items() if not k.startswith("backbone.")}
    save_file(own, str(path / "medim_modules.safetensors"))


def load_adapter(model: MeDiM, path: Path) -> None:
    """Load a folder written by :func:`save_adapter` into a LoRA model's trainable tensors."""
    by_peft_key = {_peft_key(k): k for k in trainable_state(model) if k.startswith("backbone.")}
    lora = load_file(str(path / "adapter_model.safetensors"))
    unknown = sorted(set(lora) - set(by_peft_key))
    if unknown:
        raise KeyError(f"{path}/adapter_model.safetensors: unexpected keys {unknown[:5]}")
    state = {by_peft_key[k]: v for k, v in lora.items()}
    state.update(load_file(str(path / "medim_modules.safetensors")))
    load_trainable_state(model, state)
