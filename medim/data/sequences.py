"""Prepared folders -> clean token sequences x0 for MeDiM.

Each manifest record becomes ``<boi> codes <eoi> report-tokens <eos> <pad>...`` (see
:class:`medim.tokenize.vocab.Vocab`), using the folder's VQ code cache and the model's text tokenizer. Reports
longer than the text region are truncated (counted in ``truncated``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from medim.data.manifest import read_manifest
from medim.tokenize.text import TextTokenizer
from medim.tokenize.vocab import Vocab
from medim.tokenize.vq import VQTokenizer
from medim.tokenize.vq_cache import encode_folder


@dataclass
class SequenceSet:
    """Sequences of one or more prepared folders.

    x0: LongTensor [N, L]; ``ids``, ``splits``, ``modalities``, ``reports`` are aligned with its rows.
    """

    x0: torch.Tensor
    ids: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)
    truncated: int = 0

    def __len__(self) -> int:
        return int(self.x0.shape[0])

    def select(self, *, splits: Sequence[str] | None = None, modality: str | None = None) -> SequenceSet:
        """The rows in ``splits`` (all when None) and of ``modality`` (all when None)."""
        keep = [
            i
            for i in range(len(self))
            if (splits is None or self.splits[i] in splits)
            and (modality is None or self.modalities[i] == modality)
        ]
        return SequenceSet(
            x0=self.x0[keep],
            ids=[self.ids[i] for i in keep],
            splits=[self.splits[i] for i in keep],
            modalities=[self.modalities[i] for i in keep],
            reports=[self.reports[i] for i in keep],
            truncated=self.truncated,
        )

    @staticmethod
    def concat(parts: Sequence[SequenceSet], seq_len: int) -> SequenceSet:
        """All rows of ``parts`` in order (an empty list gives an empty set of width ``seq_len``)."""
        if not parts:
            return SequenceSet(x0=torch.zeros((0, seq_len), dtype=torch.long))
        return SequenceSet(
            x0=torch.cat([p.x0 for p in parts]),
            ids=[i for p in parts for i in p.ids],
            splits=[s for p in parts for s in p.splits],
            modalities=[m for p in parts for m in p.modalities],
            reports=[r for p in parts for r in p.reports],
            truncated=sum(p.truncated for p in parts),
        )


def build_sequences(
    folder: Path, *, vq: VQTokenizer, text: TextTokenizer, vocab: Vocab, progress: bool = False
) -> SequenceSet:
    """Sequences of every record of a prepared folder (codes from its cache, encoded once if missing)."""
    if vq.config.image_tokens != vocab.image_tokens or vq.config.codebook_size != vocab.codebook_size:
        raise ValueError(
            f"tokenizer gives {vq.config.image_tokens} codes from {vq.config.codebook_size}, but the model expects "
            f"{vocab.image_tokens} from {vocab.codebook_size} (model.image_tokens / model.codebook_size)"
        )
    records = read_manifest(folder)
    cache = encode_folder(vq, folder, progress=progress)
    rows, truncated = [], 0
    for rec in records:
        ids = text.encode(rec.report)
        truncated += len(ids) > vocab.text_tokens - 1
        rows.append(vocab.sequence(cache.get(rec.id), ids))
    x0 = torch.stack(rows) if rows else torch.zeros((0, vocab.seq_len), dtype=torch.long)
    return SequenceSet(
        x0=x0,
        ids=[r.id for r in records],
        splits=[r.split for r in records],
        modalities=[r.modality for r in records],
        reports=[r.report for r in records],
        truncated=truncated,
    )


def load_sequences(
    folders: Sequence[Path], *, vq: VQTokenizer, text: TextTokenizer, vocab: Vocab, progress: bool = False
) -> SequenceSet:
    """:func:`build_sequences` over several prepared folders, concatenated."""
    parts = [build_sequences(f, vq=vq, text=text, vocab=vocab, progress=progress) for f in folders]
    return SequenceSet.concat(parts, vocab.seq_len)
