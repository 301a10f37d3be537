"""Clinical correctness: label agreement between reports, images and prompts (pure functions on label sets).

Label sources (each turns one text into a set of positive label names):

- ``chexpert-rules``: :func:`medim.metrics.chexpert_rules.label_report`, positive columns only (real CXR);
- ``synthetic-cxr``: :func:`medim.data.findings.extract_cxr_findings` (synthetic ground-truth vocabulary);
- ``synthetic-pathology``: :func:`medim.data.findings.extract_pathology_findings` as ``key=value`` labels,
  e.g. ``{"tissue=adenocarcinoma", "density=high", "atypia=severe"}``.

Scores:

- :func:`label_scores`: precision / recall / F1 of predicted label sets against reference sets, micro (pooled
  counts) and macro (mean over labels that occur in the references or the predictions at least once);
  a ratio with a zero denominator is 0.
- :func:`finding_accuracy`: a generated image's findings predicted by our domain classifier against the
  findings of its prompt.
- :func:`pair_consistency`: for jointly generated pairs, the image classifier's findings against the findings
  stated in the generated report.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from medim.data import findings as F
from medim.metrics.chexpert_rules import label_report, positive_columns

PATHOLOGY_LABELS = tuple(
    f"{key}={value}"
    for key, values in (("tissue", F.TISSUE_TYPES), ("density", F.DENSITIES), ("atypia", F.ATYPIA_GRADES))
    for value in values
)


def pathology_labels(caption: str) -> set[str]:
    """``key=value`` labels stated in a pathology caption (keys from :data:`F.PATHOLOGY_KEYS`)."""
    return {f"{k}={v}" for k, v in F.extract_pathology_findings(caption).items() if v is not None}


def chexpert_labels(report: str) -> set[str]:
    """CheXpert columns stated positively in a CXR report by the rule-based labeler."""
    return positive_columns(label_report(report))


@dataclass(frozen=True)
class Labeler:
    """A named text -> label-set function and the label names it can produce."""

    name: str
    labels: tuple[str, ...]
    extract: Callable[[str], set[str]]


LABELERS = {
    "chexpert-rules": Labeler("chexpert-rules", F.CHEXPERT_COLUMNS, chexpert_labels),
    "synthetic-cxr": Labeler("synthetic-cxr", F.CXR_FINDINGS, F.extract_cxr_findings),
    "synthetic-pathology": Labeler("synthetic-pathology", PATHOLOGY_LABELS, pathology_labels),
}


@dataclass(frozen=True)
class PRF:
    """Precision, recall, F1 and the number of reference positives (``support``)."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class LabelScores:
    """Micro and macro P/R/F1 over ``n`` samples, and P/R/F1 per label (all labels asked for)."""

    micro: PRF
    macro: PRF
    per_label: dict[str, PRF]
    n: int


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def _prf(tp: int, fp: int, fn: int) -> PRF:
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return PRF(precision, recall, _ratio(2 * precision * recall, precision + recall), tp + fn)


def _check(refs: Sequence[Collection[str]], hyps: Sequence[Collection[str]], labels: Sequence[str]) -> None:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} reference label sets but {len(hyps)} predicted label sets")
    if not refs:
        raise ValueError("no samples to score")
    unknown = set().union(*refs, *hyps) - set(labels)
    if unknown:
        raise ValueError(f"labels {sorted(unknown)} are not in the label list {list(labels)}")


def label_scores(
    refs: Sequence[Collection[str]], hyps: Sequence[Collection[str]], labels: Sequence[str]
) -> LabelScores:
    """P/R/F1 of predicted label sets ``hyps[i]`` against reference sets ``refs[i]`` over ``labels``."""
    _check(refs, hyps, labels)
    per_label: dict[str, PRF] = {}
    totals = [0, 0, 0]
    used: list[PRF] = []
    for label in labels:
        tp = sum(label in r and label in h for r, h in zip(refs, hyps, strict=True))
        fp = sum(label not in r and label in h for r, h in zip(refs, hyps, strict=True))
        fn = sum(label in r and label not in h for r, h in zip(refs, hyps, strict=True))
        per_label[label] = _prf(tp, fp, fn)
        totals = [totals[0] + tp, totals[1] + fp, totals[2] + fn]
        if tp + fp + fn:
            used.append(per_label[label])
    macro = PRF(
        _ratio(sum(p.precision for p in used), len(used)),
        _ratio(sum(p.recall for p in used), len(used)),
        _ratio(sum(p.f1 for p in used), len(used)),
        sum(p.support for p in used),
    )
    return LabelScores(_prf(*totals), macro, per_label, len(refs))


@dataclass(frozen=True)
class Agreement:
    """How two label-set lists agree: per-label accuracy (mean and by label), exact-match rate and P/R/F1
    taking the first list as reference."""

    accuracy: float
    exact_match: float
    per_label_accuracy: dict[str, float]
    scores: LabelScores


def _agreement(
    refs: Sequence[Collection[str]], hyps: Sequence[Collection[str]], labels: Sequence[str]
) -> Agreement:
    scores = label_scores(refs, hyps, labels)
    pairs = list(zip(refs, hyps, strict=True))
    per_label = {label: sum((label in r) == (label in h) for r, h in pairs) / len(pairs) for label in labels}
    exact = sum(set(r) == set(h) for r, h in pairs) / len(pairs)
    return Agreement(sum(per_label.values()) / len(labels), exact, per_label, scores)


def finding_accuracy(
    prompt_findings: Sequence[Collection[str]], predicted: Sequence[Collection[str]], labels: Sequence[str]
) -> Agreement:
    """Findings predicted on generated images (our classifier) against the findings of their prompts."""
    return _agreement(prompt_findings, predicted, labels)


def pair_consistency(
    image_findings: Sequence[Collection[str]],
    report_findings: Sequence[Collection[str]],
    labels: Sequence[str],
) -> Agreement:
    """Jointly generated pairs: findings stated in the report against the image classifier's findings."""
    return _agreement(image_findings, report_findings, labels)
