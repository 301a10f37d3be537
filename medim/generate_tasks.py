"""The samples of a ``medim-generate`` run, and the batched sampling loop that writes them.

Every task becomes a list of :class:`Item`: a starting sequence (``[MASK]`` where to generate, the condition
copied in) and what to record. :func:`generate_items` samples them in batches with the MaskGIT sampler and
writes, per sample, ``images/<id>.png`` (the image region of the final sequence, decoded by the VQ tokenizer:
generated, or for image->report the tokenizer's reconstruction of the input) and one JSON line.

Seeds: the batch that starts at sample ``i`` is drawn with a generator seeded ``seed + i``; a run is reproduced
by the same inputs, seed and batch size, and with ``--batch-size 1`` sample ``i`` alone by seed ``seed + i``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from medim.config import SamplerConfig
from medim.generate_inputs import ImageFile, ReportInput, prepare_image
from medim.model.medim import MeDiM
from medim.sampling import (
    Prompt,
    image_to_text_prompt,
    joint_prompt,
    prompted_pair_prompt,
    sample,
    text_to_image_prompt,
)
from medim.tokenize.text import TextTokenizer
from medim.tokenize.vq import VQTokenizer, to_modality

TASKS = ("report-to-image", "image-to-report", "pairs")


@dataclass
class Item:
    """One sample to generate.

    ``x`` LongTensor [L] with [MASK] where to generate; ``condition`` BoolTensor [L] marks the given content
    tokens (hidden in the CFG unconditional pass); ``inputs`` is recorded as is; ``modality`` decides how the
    image is saved (``cxr`` grayscale, ``pathology`` or None RGB as decoded).
    """

    id: str
    task: str
    x: torch.Tensor
    condition: torch.Tensor
    inputs: dict[str, Any] = field(default_factory=dict)
    generated: tuple[str, ...] = ()
    modality: str | None = None


def _row(prompt: Prompt) -> tuple[torch.Tensor, torch.Tensor]:
    return prompt.x[0], prompt.condition[0]


def report_items(reports: Sequence[ReportInput], model: MeDiM, text: TextTokenizer) -> list[Item]:
    """Report->image: the text region holds the report (truncated to the text region like training data)."""
    vocab = model.vocab
    items = []
    for report in reports:
        ids = text.encode(report.text)
        x0 = vocab.sequence(torch.zeros(vocab.image_tokens, dtype=torch.long), ids)
        x, cond = _row(text_to_image_prompt(vocab, x0[None]))
        inputs = {"text": report.text, "source": report.source, "truncated": len(ids) > vocab.text_tokens - 1}
        items.append(Item(report.id, "report-to-image", x, cond, inputs, ("image",), report.modality))
    return items


@torch.no_grad()
def image_items(
    files: Sequence[ImageFile], model: MeDiM, vq: VQTokenizer, *, modality: str | None, batch_size: int
) -> list[Item]:
    """Image->report: every file preprocessed like training data and encoded to codes (all read before any
    sampling, so a bad file stops the run early)."""
    vocab = model.vocab
    items = []
    for start in range(0, len(files), batch_size):
        batch = files[start : start + batch_size]
        prepared = [prepare_image(f.path, vq.config.resolution, modality) for f in batch]
        codes = vq.encode(torch.stack([p.pixels for p in prepared]))
        for file, image, row in zip(batch, prepared, codes, strict=True):
            x, cond = _row(image_to_text_prompt(vocab, vocab.sequence(row, [])[None]))
            inputs = {"image": str(file.path), "modality": image.modality}
            items.append(Item(file.id, "image-to-report", x, cond, inputs, ("report",), image.modality))
    return items


def pair_items(
    n: int, prompts: Sequence[str], model: MeDiM, text: TextTokenizer, *, modality: str | None
) -> list[Item]:
    """``n`` unconditional pairs, or ``n`` pairs per prompt whose report starts with the prompt's tokens."""
    vocab = model.vocab
    if not prompts:
        return [
            Item(f"pair-{i:04d}", "pairs", *_row(joint_prompt(vocab, 1)), {}, ("image", "report"), modality)
            for i in range(n)
        ]
    items: list[Item] = []
    for prompt in prompts:
        ids = text.encode(prompt)
        x, cond = _row(prompted_pair_prompt(vocab, [ids]))
        inputs = {"prompt": prompt, "truncated": len(ids) > vocab.text_tokens - 1}
        for _ in range(n):
            i = len(items)
            items.append(Item(f"pair-{i:04d}", "pairs", x, cond, inputs, ("image", "report"), modality))
    return items


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """[B, C, H, W] in [-1, 1] -> uint8 arrays [H, W] (C = 1) or [H, W, 3]."""
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [a[..., 0] if a.shape[-1] == 1 else a for a in arr]


@dataclass
class RunSettings:
    """How the samples are drawn and where they go."""

    sampler: SamplerConfig
    seed: int
    batch_size: int
    out: Path
    progress: bool | None = None


def _save_image(decoded: torch.Tensor, modality: str | None, path: Path) -> None:
    """Write one decoded image [1, 3, H, W] in [-1, 1] as PNG (grayscale for CXR, else RGB)."""
    if modality is not None:
        decoded = to_modality(decoded, modality)
    Image.fromarray(to_uint8(decoded)[0]).save(path, format="PNG")


def generate_items(
    items: Sequence[Item],
    model: MeDiM,
    vq: VQTokenizer,
    text: TextTokenizer,
    settings: RunSettings,
    jsonl: IO[str],
) -> int:
    """Sample ``items`` in batches; write ``images/<id>.png`` and one line per sample to ``jsonl``.
    Returns the number of samples written."""
    vocab = model.vocab
    images = settings.out / "images"
    images.mkdir(parents=True, exist_ok=True)
    bar = tqdm(
        total=len(items),
        desc="generate",
        unit="sample",
        disable=None if settings.progress is None else not settings.progress,
    )
    done = 0
    for start in range(0, len(items), settings.batch_size):
        batch = items[start : start + settings.batch_size]
        prompt = Prompt(torch.stack([i.x for i in batch]), torch.stack([i.condition for i in batch]))
        generator = torch.Generator().manual_seed(settings.seed + start)
        x = sample(model, prompt, settings.sampler, generator=generator)
        decoded = vq.decode(vocab.image_codes(x))
        for item, row, image in zip(batch, x, decoded, strict=True):
            _save_image(image[None], item.modality, images / f"{item.id}.png")
            record = {
                "id": item.id,
                "task": item.task,
                "inputs": item.inputs,
                "generated": list(item.generated),
                "report": text.decode(vocab.text_ids(row)),
                "image": f"images/{item.id}.png",
                "modality": item.modality,
                "seed": settings.seed + start,
                "batch_size": len(batch),
                "sampler": asdict(settings.sampler),
            }
            jsonl.write(json.dumps(record) + "\n")
        jsonl.flush()
        done += len(batch)
        bar.update(len(batch))
    bar.close()
    return done
