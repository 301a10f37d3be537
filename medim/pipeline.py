"""The built-in workspace: synthetic hospitals -> prepared folders -> image tokenizer -> base model.

``bootstrap(root, preset=...)`` makes (or re-uses, step by step) everything the demo, the simulation and the tests
start from::

    root/synth/                       synthetic hospitals in the real formats (``medim-data synth``)
    root/prepared/<site>/<modality>/  prepared folders (``medim-data prepare``), <site> also heldout / public
    root/tokenizer-<hash>/            VQ image tokenizer trained on the public pool (``medim-tokenizer train``)
    root/base-<hash>/                 MeDiM base model pretrained centrally on the public pool (checkpoint folder)
    root/synth.json                   the synthetic data's settings (seed, scales, image size)
    root/workspace.json               what was built last, with which settings

The tokenizer and the base model are cached by a hash of everything that determines them (:class:`CacheKeys`):
the tokenizer's config and data; the model, pretraining and diffusion configs and the tokenizer's hash. A later
bootstrap with the same settings re-uses them; different settings build beside them. Each step writes its
output before the workspace records it, so an interrupted bootstrap resumes at the first missing step. Site
data is only prepared here because this is a one-machine simulation of hospitals: in a deployment each
hospital prepares its own archive.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medim.config import ConfigError, DiffusionConfig, ModelConfig, TrainConfig, load_preset
from medim.data.prepare import prepare_archive
from medim.data.sequences import SequenceSet, load_sequences
from medim.data.synthetic import SynthConfig, generate
from medim.model.checkpoint import load_checkpoint, save_checkpoint
from medim.model.factory import build_from_config, text_tokenizer
from medim.model.medim import MeDiM
from medim.tokenize.vq import VQTokenizer, load_tokenizer
from medim.tokenize.vq_config import TokenizerConfig
from medim.tokenize.vq_train import train_tokenizer
from medim.train import TrainResult, train_local

WORKSPACE_FILE = "workspace.json"
SYNTH_FILE = "synth.json"
FORMATS = {"cxr": ("mimic-cxr", "mimic-cxr"), "pathology": ("pathgen", "pathgen")}


@dataclass
class Workspace:
    """Paths of a bootstrapped workspace (see the module docstring)."""

    root: Path
    preset: str
    seed: int
    tokenizer_preset: str = ""
    tokenizer_hash: str = ""
    base_hash: str = ""
    sites: dict[str, list[Path]] = field(default_factory=dict)
    heldout: dict[str, Path] = field(default_factory=dict)
    public: list[Path] = field(default_factory=list)

    @property
    def tokenizer(self) -> Path:
        return self.root / f"tokenizer-{self.tokenizer_hash}"

    @property
    def base_model(self) -> Path:
        return self.root / f"base-{self.base_hash}"

    def save(self) -> None:
        data = asdict(self)
        data = json.loads(json.dumps(data, default=str))
        (self.root / WORKSPACE_FILE).write_text(json.dumps(data, indent=2))

    @classmethod
    def load(cls, root: Path) -> Workspace:
        path = root / WORKSPACE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run the bootstrap first")
        raw = json.loads(path.read_text())
        return cls(
            root=root,
            preset=raw["preset"],
            seed=raw["seed"],
            tokenizer_preset=raw["tokenizer_preset"],
            tokenizer_hash=raw["tokenizer_hash"],
            base_hash=raw["base_hash"],
            sites={k: [Path(p) for p in v] for k, v in raw["sites"].items()},
            heldout={k: Path(v) for k, v in raw["heldout"].items()},
            public=[Path(p) for p in raw["public"]],
        )

    def load_vq(self) -> VQTokenizer:
        return load_tokenizer(self.tokenizer)

    def load_base(self) -> MeDiM:
        return load_checkpoint(self.base_model)

    def sequences(self, folders: list[Path], model: MeDiM) -> SequenceSet:
        """Token sequences of prepared folders for ``model``'s vocabulary."""
        return load_sequences(folders, vq=self.load_vq(), text=text_tokenizer(model.cfg), vocab=model.vocab)


def _prepare_group(synth_group: Path, out_group: Path, image_size: int, progress: bool) -> dict[str, Path]:
    """Prepare each modality present in one synthetic site folder; returns modality -> prepared folder."""
    prepared = {}
    for modality, (fmt, sub) in FORMATS.items():
        root = synth_group / sub
        if not root.is_dir():
            continue
        out = out_group / modality
        if not (out / "manifest.jsonl").is_file():
            prepare_archive(fmt, root, out, image_size=image_size, progress=progress)
        prepared[modality] = out
    return prepared


def config_hash(payload: dict[str, Any]) -> str:
    """First 12 hex digits of the SHA-256 of ``payload`` as canonical JSON."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class CacheKeys:
    """Hashes naming the cached tokenizer (``tokenizer-<tokenizer>``) and base model (``base-<base>``)."""

    tokenizer: str
    base: str

    @staticmethod
    def of(
        *,
        model: ModelConfig,
        tokenizer: TokenizerConfig,
        pretrain: TrainConfig,
        diffusion: DiffusionConfig,
        seed: int,
        synth_scale: float,
        site_scale: float,
    ) -> CacheKeys:
        """Keys from everything that determines the tokenizer (its config, the data) and the base model.

        ``site_scale`` does not change the public pool's images, but it does change the ids (and so the order)
        of its records, hence it is part of the data's key."""
        data = {
            "seed": seed,
            "synth_scale": synth_scale,
            "site_scale": site_scale,
            "image_size": tokenizer.resolution,
        }
        tok = config_hash({"tokenizer": tokenizer.to_dict(), "data": data})
        base = config_hash(
            {
                "model": asdict(model),
                "pretrain": asdict(pretrain),
                "diffusion": asdict(diffusion),
                "tokenizer": tok,
            }
        )
        return CacheKeys(tokenizer=tok, base=base)


def bootstrap(
    root: Path,
    *,
    preset: str = "small",
    tokenizer_preset: str | None = None,
    seed: int = 0,
    synth_scale: float = 1.0,
    site_scale: float = 1.0,
    pretrain: TrainConfig | None = None,
    diffusion: DiffusionConfig | None = None,
    progress: bool = True,
) -> Workspace:
    """Build the workspace under ``root`` for a model preset and an image tokenizer preset (default: the one
    the model preset names), re-using finished steps and the cached tokenizer / base model of equal settings."""
    model_cfg = load_preset(ModelConfig, "model", preset)
    tokenizer_preset = tokenizer_preset or model_cfg.tokenizer
    vq_cfg = load_preset(TokenizerConfig, "tokenizer", tokenizer_preset)
    if (vq_cfg.image_tokens, vq_cfg.codebook_size) != (model_cfg.image_tokens, model_cfg.codebook_size):
        raise ConfigError(
            f"model preset {preset!r} reads {model_cfg.image_tokens} codes from {model_cfg.codebook_size}, but "
            f"tokenizer preset {tokenizer_preset!r} makes {vq_cfg.image_tokens} from {vq_cfg.codebook_size}"
        )
    pretrain = pretrain or load_preset(TrainConfig, "train", preset)
    diffusion = diffusion or load_preset(DiffusionConfig, "diffusion", "default")
    keys = CacheKeys.of(
        model=model_cfg,
        tokenizer=vq_cfg,
        pretrain=pretrain,
        diffusion=diffusion,
        seed=seed,
        synth_scale=synth_scale,
        site_scale=site_scale,
    )
    root.mkdir(parents=True, exist_ok=True)
    image_size = vq_cfg.resolution
    synth = root / "synth"
    synth_cfg = SynthConfig(seed=seed, image_size=image_size, scale=synth_scale, site_scale=site_scale)
    settings = {"seed": seed, "synth_scale": synth_scale, "site_scale": site_scale, "image_size": image_size}
    if not (synth / "sites.json").is_file():
        generate(synth_cfg, synth, show_progress=progress)
        (root / SYNTH_FILE).write_text(json.dumps(settings))
    made = json.loads((root / SYNTH_FILE).read_text()) if (root / SYNTH_FILE).is_file() else settings
    made.setdefault("site_scale", 1.0)  # workspaces made before site_scale existed
    if made != settings:
        raise ConfigError(f"{synth} was generated with {made}, not {settings}: use another workspace folder")
    ws = Workspace(
        root=root,
        preset=preset,
        seed=seed,
        tokenizer_preset=tokenizer_preset,
        tokenizer_hash=keys.tokenizer,
        base_hash=keys.base,
    )
    for site_dir in sorted((synth / "sites").iterdir()):
        ws.sites[site_dir.name] = list(
            _prepare_group(site_dir, root / "prepared" / site_dir.name, image_size, progress).values()
        )
    ws.heldout = _prepare_group(synth / "heldout", root / "prepared" / "heldout", image_size, progress)
    ws.public = list(
        _prepare_group(synth / "public", root / "prepared" / "public", image_size, progress).values()
    )
    if not (ws.tokenizer / "reconstruction.json").is_file():
        train_tokenizer(vq_cfg, ws.public, ws.tokenizer, progress=progress)
    if not (ws.base_model / "model.safetensors").is_file():
        pretrain_base(ws, model_cfg, pretrain, diffusion, progress)
    ws.save()
    return ws


def pretrain_base(
    ws: Workspace,
    model_cfg: ModelConfig,
    train: TrainConfig,
    diffusion: DiffusionConfig,
    progress: bool = True,
) -> TrainResult:
    """Train the full base model centrally on the public pool's train split; save it to ``ws.base_model``."""
    model = build_from_config(model_cfg, seed=train.seed)
    data = ws.sequences(ws.public, model).select(splits=["train"])
    result = train_local(model, data.x0, diffusion=diffusion, train=train, progress=progress)
    save_checkpoint(model, ws.base_model)
    (ws.base_model / "pretrain.json").write_text(json.dumps(asdict(result), indent=2))
    return result
