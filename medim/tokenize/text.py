"""Text tokenizer: medim's own BPE (shipped in the package) or a pretrained backbone's own tokenizer.

The shipped ``text_tokenizer.json`` is a byte-fallback-free BPE with a Metaspace pre-tokenizer (so decoding
restores spacing), lower-casing, and the de-identification blank ``___`` as a single token. It is trained
reproducibly by ``python -m medim.tokenize.text build`` on public text: the PathGen sample captions and the
synthetic report generator's vocabulary.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

BUILTIN_PATH = Path(__file__).with_name("text_tokenizer.json")
DEID_BLANK = "___"
UNK = "<unk>"
DEFAULT_VOCAB_SIZE = 4096


@dataclass
class TextTokenizer:
    """Encode/decode report text. ``size`` is the number of text ids (the backbone's text rows)."""

    backend: Any
    size: int

    @classmethod
    def builtin(cls) -> TextTokenizer:
        """medim's shipped BPE tokenizer."""
        return cls.from_file(BUILTIN_PATH)

    @classmethod
    def from_file(cls, path: Path) -> TextTokenizer:
        if not path.is_file():
            raise FileNotFoundError(
                f"text tokenizer file {path} not found (rebuild: python -m medim.tokenize.text build)"
            )
        tok = Tokenizer.from_file(str(path))
        return cls(tok, tok.get_vocab_size())

    @classmethod
    def from_pretrained(cls, path: str | Path, *, vocab_rows: int) -> TextTokenizer:
        """A local HF tokenizer folder (never the network); ``vocab_rows`` = the backbone's embedding rows."""
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        if len(tok) > vocab_rows:
            raise ValueError(
                f"tokenizer in {path} has {len(tok)} ids but the backbone only {vocab_rows} rows"
            )
        return cls(tok, vocab_rows)

    def encode(self, text: str) -> list[int]:
        if isinstance(self.backend, Tokenizer):
            return list(self.backend.encode(text).ids)
        return list(self.backend.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        if isinstance(self.backend, Tokenizer):
            return str(self.backend.decode(ids))
        return str(self.backend.decode(ids, skip_special_tokens=True))


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Train the BPE on ``texts`` (deterministic for the same texts in the same order)."""
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[UNK], show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(DEID_BLANK, single_word=False, normalized=False)])
    return tok


def pathgen_captions(path: Path) -> list[str]:
    """Captions of a PathGen-format JSON list (``caption`` field), in file order."""
    entries = json.loads(path.read_text())
    return [str(e["caption"]) for e in entries if isinstance(e, dict) and e.get("caption")]


def builtin_corpus(pathgen_json: Path, seed: int = 0) -> list[str]:
    """The public text the shipped tokenizer is trained on: PathGen sample captions + synthetic reports."""
    from medim.data.synthetic import vocabulary_corpus

    return pathgen_captions(pathgen_json) + vocabulary_corpus(seed=seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medim.tokenize.text", description="(re)build the shipped tokenizer"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build")
    build.add_argument(
        "--pathgen", type=Path, default=Path("../shared/data/pathgen-sample/PathGen-1.6M_sample.json")
    )
    build.add_argument("--out", type=Path, default=BUILTIN_PATH)
    build.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    args = parser.parse_args(argv)
    if not args.pathgen.is_file():
        print(f"error: PathGen sample {args.pathgen} not found", file=sys.stderr)
        return 2
    tok = train_tokenizer(builtin_corpus(args.pathgen), args.vocab_size)
    tok.save(str(args.out))
    print(f"wrote {args.out} ({tok.get_vocab_size()} ids)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
