"""Report-generation metrics under two protocols.

``coco`` (R2Gen family): pycocoevalcap 1.2 scorers called one by one (never SPICE, never
``COCOEvalCap.evaluate()``) on texts tokenised by its Stanford PTB tokenizer (lower-cased, punctuation removed):
corpus-level BLEU-1..4, METEOR 1.5 (Java), ROUGE-L (mean of per-report LCS F-measures, beta 1.2) and CIDEr-D
(document frequencies from the references). The tokenizer and METEOR run ``java``; the tokenizer writes a
temporary file into pycocoevalcap's package folder.

``medim`` (the official MeDiM evaluation): tokenisation ``text.lower().replace(".", " .").split(" ")`` with
empty tokens dropped, NLTK ``sentence_bleu`` with ``SmoothingFunction().method1`` for BLEU-n (uniform weights
over 1..n-grams) averaged over reports, NLTK ``single_meteor_score`` averaged over reports (WordNet 3.0 from
Debian's ``wordnet-base``, see :mod:`medim.metrics.wordnet`) and the ``rouge`` package's ROUGE-L F averaged over
reports. An empty generated report scores 0 on every metric.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from nltk.translate.meteor_score import single_meteor_score
from rouge import Rouge

from medim.metrics.wordnet import WordNetUnavailable, load_wordnet

JAVA_HINT = (
    "install a Java runtime: scripts/system-deps.sh (as root: apt-get install -y openjdk-17-jre-headless)"
)


class JavaNotFoundError(RuntimeError):
    """``java`` is not on PATH, so the PTB tokenizer and METEOR 1.5 of pycocoevalcap cannot run."""


@dataclass(frozen=True)
class CocoScores:
    """pycocoevalcap metrics of a corpus of generated reports (all in [0, 1] except CIDEr, in [0, 10])."""

    bleu1: float
    bleu2: float
    bleu3: float
    bleu4: float
    meteor: float
    rouge_l: float
    cider: float


@dataclass(frozen=True)
class MedimScores:
    """MeDiM-protocol metrics, each a mean over reports; ``meteor`` is ``None`` when WordNet is missing.

    ``unavailable`` maps a metric name to the reason it could not be computed.
    """

    bleu1: float
    bleu2: float
    bleu3: float
    bleu4: float
    meteor: float | None
    rouge_l: float
    unavailable: dict[str, str] = field(default_factory=dict)


def _check_pairs(refs: Sequence[str], hyps: Sequence[str]) -> None:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} reference reports but {len(hyps)} generated reports")
    if not refs:
        raise ValueError("no reports to score")


def require_java() -> str:
    """Path of the ``java`` executable; raises :class:`JavaNotFoundError` naming the fix when absent."""
    java = shutil.which("java")
    if java is None:
        raise JavaNotFoundError(
            f"'java' not found on PATH ({os.environ.get('PATH', '')}): pycocoevalcap's PTB tokenizer and "
            f"METEOR 1.5 need it; {JAVA_HINT}"
        )
    return java


def _ptb_tokenize(texts: Sequence[str]) -> dict[int, list[str]]:
    from pycocoevalcap.tokenizer import ptbtokenizer

    folder = Path(ptbtokenizer.__file__).parent
    if not os.access(folder, os.W_OK):
        raise PermissionError(
            f"pycocoevalcap's PTB tokenizer writes a temporary file into {folder}: not writable"
        )
    captions = {i: [{"caption": text}] for i, text in enumerate(texts)}
    return ptbtokenizer.PTBTokenizer().tokenize(captions)


def coco_scores(refs: Sequence[str], hyps: Sequence[str]) -> CocoScores:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr of ``hyps[i]`` against the single reference ``refs[i]``."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge as CocoRouge

    _check_pairs(refs, hyps)
    require_java()
    gts, res = _ptb_tokenize(refs), _ptb_tokenize(hyps)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    meteor_scorer = Meteor()
    try:
        meteor, _ = meteor_scorer.compute_score(gts, res)
    finally:  # stop the METEOR JVM now rather than at garbage collection
        meteor_scorer.meteor_p.stdin.close()
        meteor_scorer.meteor_p.kill()
        meteor_scorer.meteor_p.wait()
    rouge_l, _ = CocoRouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    return CocoScores(
        bleu1=float(bleu[0]),
        bleu2=float(bleu[1]),
        bleu3=float(bleu[2]),
        bleu4=float(bleu[3]),
        meteor=float(meteor),
        rouge_l=float(rouge_l),
        cider=float(cider),
    )


def medim_tokens(text: str) -> list[str]:
    """MeDiM's tokenisation: lower-case, ``"."`` -> ``" ."``, split on spaces (empty tokens dropped)."""
    return [token for token in text.lower().replace(".", " .").split(" ") if token]


_BLEU_WEIGHTS = ((1.0,), (0.5, 0.5), (1 / 3, 1 / 3, 1 / 3), (0.25, 0.25, 0.25, 0.25))


def _rouge_l(ref: list[str], hyp: list[str]) -> float:
    """ROUGE-L F of the `rouge` package (summary level: it splits sentences at "."); 0 without words."""
    if not set(hyp) - {"."} or not set(ref) - {"."}:
        return 0.0
    scores = Rouge(metrics=["rouge-l"]).get_scores(" ".join(hyp), " ".join(ref))
    return float(scores[0]["rouge-l"]["f"])


def medim_scores(refs: Sequence[str], hyps: Sequence[str]) -> MedimScores:
    """MeDiM-protocol BLEU-1..4, METEOR and ROUGE-L of ``hyps[i]`` against ``refs[i]``, averaged over reports."""
    _check_pairs(refs, hyps)
    smoothing = SmoothingFunction().method1
    pairs = [(medim_tokens(r), medim_tokens(h)) for r, h in zip(refs, hyps, strict=True)]
    bleu = [0.0] * 4
    rouge_sum = 0.0
    for ref, hyp in pairs:
        if not hyp:
            continue
        for n, weights in enumerate(_BLEU_WEIGHTS):
            bleu[n] += float(sentence_bleu([ref], hyp, weights=weights, smoothing_function=smoothing))
        rouge_sum += _rouge_l(ref, hyp)
    unavailable: dict[str, str] = {}
    meteor: float | None
    try:
        wordnet = load_wordnet()
    except WordNetUnavailable as error:
        meteor, unavailable["meteor"] = None, str(error)
    else:
        meteor = sum(single_meteor_score(r, h, wordnet=wordnet) for r, h in pairs if h) / len(pairs)
    return MedimScores(
        bleu1=bleu[0] / len(pairs),
        bleu2=bleu[1] / len(pairs),
        bleu3=bleu[2] / len(pairs),
        bleu4=bleu[3] / len(pairs),
        meteor=meteor,
        rouge_l=rouge_sum / len(pairs),
        unavailable=unavailable,
    )
