"""Load taming-transformers / Chameleon VQGAN checkpoints (``vqgan.ckpt`` + ``vqgan.yaml``) into VQTokenizer.

The yaml has taming's structure ``model.params.{embed_dim, n_embed, ddconfig{double_z, z_channels,
resolution, in_channels, out_ch, ch, ch_mult, num_res_blocks, attn_resolutions, dropout}}`` and is parsed with
``yaml.safe_load``. The checkpoint is a torch file with a ``state_dict`` and is read with
``torch.load(weights_only=True)`` (no arbitrary unpickling). Our module uses taming's parameter names, so the
key mapping is the identity after dropping the training-only ``loss.*`` entries (LPIPS, discriminator);
every other missing or unexpected key and every shape mismatch is reported by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from medim.config import ConfigError
from medim.tokenize.vq import VQTokenizer, load_state_checked
from medim.tokenize.vq_config import TokenizerConfig

TRAINING_ONLY_PREFIXES = ("loss.",)
TAMING_GROUPS = 32


def _get(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise ValueError(f"{where}: missing setting {key!r}")
    return mapping[key]


def config_from_taming_yaml(path: str | Path) -> TokenizerConfig:
    """The TokenizerConfig of a taming/Chameleon ``vqgan.yaml`` (Euclidean codebook, GroupNorm(32))."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: VQGAN yaml not found")
    doc = yaml.safe_load(path.read_text())
    params = _get(_get(doc, "model", str(path)), "params", f"{path} model")
    dd = _get(params, "ddconfig", f"{path} model.params")
    where = f"{path} model.params.ddconfig"
    if dd.get("double_z", False):
        raise ValueError(f"{where}: double_z=True is a KL autoencoder setting; a VQGAN has double_z=False")
    in_ch, out_ch = _get(dd, "in_channels", where), _get(dd, "out_ch", where)
    if in_ch != out_ch:
        raise ValueError(f"{where}: in_channels={in_ch} and out_ch={out_ch} must be equal")
    attn_type = dd.get("attn_type", "vanilla")
    if attn_type != "vanilla":
        raise ValueError(f"{where}: attn_type={attn_type!r} is not supported: allowed 'vanilla'")
    try:
        return TokenizerConfig(
            resolution=int(_get(dd, "resolution", where)),
            in_channels=int(in_ch),
            ch=int(_get(dd, "ch", where)),
            ch_mult=[int(m) for m in _get(dd, "ch_mult", where)],
            num_res_blocks=int(_get(dd, "num_res_blocks", where)),
            attn_resolutions=[int(r) for r in (dd.get("attn_resolutions") or [])],
            dropout=float(dd.get("dropout", 0.0)),
            z_channels=int(_get(dd, "z_channels", where)),
            embed_dim=int(_get(params, "embed_dim", f"{path} model.params")),
            codebook_size=int(_get(params, "n_embed", f"{path} model.params")),
            l2_normalize=False,
            norm_groups=TAMING_GROUPS,
        )
    except ConfigError as err:
        raise ValueError(f"{path}: {err}") from None


def read_taming_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a taming checkpoint without the training-only ``loss.*`` entries."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: VQGAN checkpoint not found")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (
        Exception
    ) as err:  # torch raises UnpicklingError/RuntimeError subclasses for unsafe or broken files
        raise ValueError(f"{path}: cannot read as a weights-only torch checkpoint ({err})") from None
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict with a 'state_dict' of tensors")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if str(key).startswith(TRAINING_ONLY_PREFIXES):
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: state_dict entry {key!r} is not a tensor")
        out[str(key)] = value
    return out


def load_taming(ckpt: str | Path, config_yaml: str | Path) -> VQTokenizer:
    """A VQTokenizer (eval mode, float32, CPU) with the weights of a taming/Chameleon VQGAN checkpoint."""
    model = VQTokenizer(config_from_taming_yaml(config_yaml))
    load_state_checked(model, read_taming_state(ckpt), source=str(ckpt))
    return model.eval()
