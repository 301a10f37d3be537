"""Load the model and image tokenizer that ``medim-generate`` samples with.

``--model`` is a checkpoint folder (:func:`medim.model.checkpoint.save_checkpoint`): a base model, or a LoRA model
(global or site) whose ``adapter/`` is loaded with it. ``--adapter`` optionally replaces the trainable state
(LoRA A/B, time embedding, AdaLN, new token rows) with one of:

* a trainable-state file ``*.safetensors`` keyed by parameter name (what a site sends),
* a federated run's round folder (``round-NNNN/trainable.safetensors``) or its checkpoint root (``LATEST``),
* an adapter folder written by :func:`medim.model.checkpoint.save_adapter` (``adapter_model.safetensors``),
* another LoRA checkpoint folder (its ``adapter/``).

A base model gets LoRA injected first. With ``merge`` the adapters are folded into the weights before sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from medim.model.checkpoint import ADAPTER, load_adapter, load_checkpoint
from medim.model.lora import apply_lora, is_lora, load_trainable_state
from medim.model.medim import MeDiM
from medim.model.merge import merge_lora
from medim.tokenize.vq import VQTokenizer, load_tokenizer

ROUND_STATE = "trainable.safetensors"
LATEST = "LATEST"
PEFT_WEIGHTS = "adapter_model.safetensors"


class GenerateError(ValueError):
    """A bad input or setting for ``medim-generate``; the message names the file or option."""


@dataclass(frozen=True)
class AdapterSource:
    """Where the trainable state comes from: ``kind`` is ``state-file`` (``path`` is a safetensors file of
    trainable tensors) or ``adapter-folder`` (``path`` holds ``adapter_model.safetensors`` +
    ``medim_modules.safetensors``)."""

    kind: str
    path: Path


@dataclass
class LoadedModel:
    """The model ready for sampling (eval mode) and how it was assembled."""

    model: MeDiM
    adapter: AdapterSource | None
    lora: bool
    merged_layers: int


def resolve_adapter(path: Path) -> AdapterSource:
    """Find the trainable state ``--adapter`` points at (see the module docstring for the accepted layouts)."""
    if path.is_file():
        if path.suffix != ".safetensors":
            raise GenerateError(f"--adapter {path}: a file must be a .safetensors trainable state")
        return AdapterSource("state-file", path)
    if not path.is_dir():
        raise GenerateError(f"--adapter {path}: no such file or folder")
    if (path / PEFT_WEIGHTS).is_file():
        return AdapterSource("adapter-folder", path)
    if (path / ADAPTER / PEFT_WEIGHTS).is_file():
        return AdapterSource("adapter-folder", path / ADAPTER)
    if (path / ROUND_STATE).is_file():
        return AdapterSource("state-file", path / ROUND_STATE)
    if (path / LATEST).is_file():
        latest = path / (path / LATEST).read_text().strip()
        if not (latest / ROUND_STATE).is_file():
            raise GenerateError(f"--adapter {path}: {LATEST} points at {latest}, which has no {ROUND_STATE}")
        return AdapterSource("state-file", latest / ROUND_STATE)
    raise GenerateError(
        f"--adapter {path}: found none of {PEFT_WEIGHTS}, {ADAPTER}/{PEFT_WEIGHTS}, {ROUND_STATE} or {LATEST}"
    )


def _load_state(model: MeDiM, source: AdapterSource) -> None:
    try:
        if source.kind == "adapter-folder":
            load_adapter(model, source.path)
        else:
            load_trainable_state(model, load_file(str(source.path)))
    except (KeyError, ValueError, OSError, SafetensorError) as err:
        raise GenerateError(f"--adapter {source.path}: does not fit the model ({err})") from None


def load_model(model_dir: Path, *, adapter: Path | None = None, merge: bool = False) -> LoadedModel:
    """The checkpoint in ``model_dir`` with the optional adapter loaded (and merged), in eval mode."""
    if not (model_dir / "medim_config.json").is_file():
        raise GenerateError(f"--model {model_dir}: not a medim checkpoint folder (no medim_config.json)")
    try:
        model = load_checkpoint(model_dir)
    except (KeyError, ValueError, OSError, SafetensorError) as err:
        raise GenerateError(f"--model {model_dir}: cannot load the checkpoint ({err})") from None
    source = resolve_adapter(adapter) if adapter is not None else None
    if source is not None:
        if not is_lora(model):
            apply_lora(model)
        _load_state(model, source)
    lora = is_lora(model)
    merged = 0
    if merge:
        if not lora:
            raise GenerateError(f"--merge: {model_dir} has no LoRA adapters and no --adapter was given")
        merged = merge_lora(model)
    return LoadedModel(model=model.eval(), adapter=source, lora=lora, merged_layers=merged)


def load_matching_tokenizer(folder: Path, model: MeDiM) -> VQTokenizer:
    """The VQ tokenizer in ``folder``, checked against the model's image region (tokens and codebook)."""
    try:
        vq = load_tokenizer(folder)
    except (KeyError, ValueError, OSError, SafetensorError) as err:
        raise GenerateError(f"--tokenizer {folder}: cannot load the image tokenizer ({err})") from None
    vocab = model.vocab
    if vq.config.image_tokens != vocab.image_tokens or vq.config.codebook_size != vocab.codebook_size:
        raise GenerateError(
            f"--tokenizer {folder}: gives {vq.config.image_tokens} codes from a codebook of "
            f"{vq.config.codebook_size}, but the model expects {vocab.image_tokens} codes from "
            f"{vocab.codebook_size} (model.image_tokens / model.codebook_size)"
        )
    return vq.eval()
