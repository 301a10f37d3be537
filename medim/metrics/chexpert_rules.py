"""A rule-based CheXpert-14 style labeler for chest X-ray reports: ours, a substitute for CheXbert.

CheXbert, RadGraph and similar learned labelers need weights downloaded at run time; this one is a small set
of hand-written rules in the spirit of the CheXpert labeler (mention extraction, then negation and uncertainty
classification), without its dependency parse. Its numbers are **not** comparable to CheXbert-based clinical
efficacy scores in papers.

For each of the 14 CheXpert columns (:data:`medim.data.findings.CHEXPERT_COLUMNS`) a report gets ``1``
(positive), ``0`` (negative), ``-1`` (uncertain) or ``None`` (not mentioned):

1. text: the FINDINGS and IMPRESSION sections when the report has them, else the whole text, lower-cased;
2. clauses: sentences split at ``.``/blank lines, then at ``;``, "but", "however", "although", "though",
   "except" and "and there is/are";
3. mentions: per-column regular expressions (:data:`_MENTIONS`); "normal" statements such as "heart size is
   normal" or "lungs are clear" give an explicit ``0`` (:data:`_NORMALS`);
4. a mention is negative when a negation cue ("no", "without", ...) comes before an uncertainty cue before it
   ("no consolidation to suggest pneumonia"); else uncertain when an uncertainty cue ("possible", "may",
   "cannot be excluded", ...) is in its clause (before it, or a post-cue after it); else negative when a
   negation cue is before it or a post-negation ("is not seen", "has resolved", ...) after it; else positive.
   Pseudo-negations such as "no change" are ignored;
5. per column: positive beats uncertain beats negative;
6. ``No Finding`` is ``1`` when no column other than Support Devices is positive or uncertain, else ``None``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from medim.data.findings import CHEXPERT_COLUMNS, report_sections

Label = int | None
POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1
NO_FINDING = "No Finding"
SUPPORT_DEVICES = "Support Devices"
NAME = "rule-based CheXpert-14 labeler (medim; a substitute for CheXbert, not comparable)"

_MENTIONS: dict[str, str] = {
    "Atelectasis": r"\batelecta\w*",
    "Cardiomegaly": r"\bcardiomegaly\b|\benlarge(?:d|ment of the) (?:heart|cardiac silhouette)\b|"
    r"\b(?:heart|heart size|cardiac silhouette) (?:is|appears) (?:\w+ )?enlarged\b",
    "Consolidation": r"\bconsolidat\w*",
    "Edema": r"\bedema\b|\bvascular congestion\b",
    "Enlarged Cardiomediastinum": r"\benlarged cardiomediastin\w*|\bwiden\w* (?:of the )?mediastin\w*|"
    r"\bmediastin\w* (?:is |appears )?widen\w*|\bcardiomediastinal silhouette (?:is|appears) enlarged\b",
    "Fracture": r"\bfractur\w*",
    "Lung Lesion": r"\bnodul\w*|\bmass(?:es)?\b|\blung lesions?\b|\bpulmonary lesions?\b|\btumou?r\b",
    "Lung Opacity": r"(?<!nodular )\bopacit\w*|\binfiltrat\w*|\bairspace disease\b",
    "Pleural Effusion": r"\beffusions?\b|\bpleural fluid\b|\bblunting of the (?:\w+ )?costophrenic",
    "Pleural Other": r"\bpleural thickening\b|\bfibrothorax\b|\bpleural plaques?\b",
    "Pneumonia": r"\bpneumonia\b",
    "Pneumothorax": r"\bpneumothora\w*",
    "Support Devices": r"\b(?:endotracheal|et|enteric|nasogastric|ng|og|feeding|chest) tubes?\b|\bcatheters?\b|"
    r"\bpicc\b|\bcentral (?:venous )?line\b|\bpacemaker\b|\bpacer\b|\bsupport devices?\b|\bstents?\b",
}

_NORMALS: dict[str, str] = {
    "Cardiomegaly": r"\bheart size (?:is )?(?:normal|within normal limits)\b|\bnormal (?:heart size|cardiac silhouette)\b",
    "Enlarged Cardiomediastinum": r"\bcardiomediastinal (?:silhouette|contours?) (?:is |are )?"
    r"(?:normal|unremarkable|stable|within normal limits)\b|\bnormal cardiomediastinal\b|"
    r"\bmediastinal (?:and hilar )?contours (?:are )?(?:normal|unremarkable|stable)\b",
    "Fracture": r"\bno (?:acute )?osseous abnormalit\w*",
    "Lung Opacity": r"\blungs are clear\b",
    "Consolidation": r"\blungs are clear\b",
}

_PSEUDO_NEGATION = re.compile(
    r"\bno (?:significant |interval |definite )?change\b|\bnot only\b|\bno increase\b"
)
_PRE_NEGATION = re.compile(
    r"\b(?:no|not|without|negative for|free of|absence of|resolution of|rather than)\b"
)
_POST_NEGATION = re.compile(
    r"\b(?:is|are) (?:not|no longer) (?:seen|identified|present|appreciated|evident|visualized)\b|"
    r"\bha(?:s|ve) resolved\b|\b(?:is|are) absent\b"
)
_PRE_UNCERTAIN = re.compile(
    r"\b(?:possible|possibly|may|might|could|cannot exclude|can not exclude|questionable|question of|"
    r"suspicious for|suspected|concerning for|suggestive of|suggests?|probable|equivocal|"
    r"versus|vs|differential|borderline|cannot rule out|can not rule out)\b"
)
_POST_UNCERTAIN = re.compile(
    r"\b(?:cannot|can not|could not|not) be (?:excluded|ruled out)\b|\bnot (?:excluded|ruled out)\b"
)
_SENTENCE_END = re.compile(r"(?<!\d)\.(?!\d)|\n\s*\n")
_CLAUSE_END = re.compile(
    r";|\bbut\b|\bhowever\b|\balthough\b|\bthough\b|\bexcept\b|(?:,\s*)?\band there (?:is|are)\b"
)

_MENTION_PATTERNS = {column: re.compile(p) for column, p in _MENTIONS.items()}
_NORMAL_PATTERNS = {column: re.compile(p) for column, p in _NORMALS.items()}


def _clinical_text(report: str) -> str:
    sections = report_sections(report)
    wanted = [sections[k] for k in ("findings", "impression", "findings and impression") if k in sections]
    return "\n\n".join(wanted) if wanted else report


def _clauses(report: str) -> list[str]:
    clauses: list[str] = []
    for sentence in _SENTENCE_END.split(_clinical_text(report).lower()):
        for clause in _CLAUSE_END.split(" ".join(sentence.split())):
            if clause.strip():
                clauses.append(_PSEUDO_NEGATION.sub(" ", clause))
    return clauses


def _classify(clause: str, start: int, end: int) -> int:
    """Label of the mention at ``clause[start:end]`` from the cues of its clause."""
    before, after = clause[:start], clause[end:]
    negation, uncertain = _PRE_NEGATION.search(before), _PRE_UNCERTAIN.search(before)
    if negation and uncertain and negation.start() < uncertain.start():
        return NEGATIVE  # "no consolidation to suggest pneumonia"
    if uncertain or _POST_UNCERTAIN.search(after):
        return UNCERTAIN
    if negation or _POST_NEGATION.search(after):
        return NEGATIVE
    return POSITIVE


def _combine(old: Label, new: int) -> int:
    """Positive beats uncertain beats negative."""
    if old is None:
        return new
    rank = {NEGATIVE: 0, UNCERTAIN: 1, POSITIVE: 2}
    return new if rank[new] > rank[old] else old


def label_report(report: str) -> dict[str, Label]:
    """CheXpert-14 labels (column -> 1, 0, -1 or None) of one chest X-ray report."""
    labels: dict[str, Label] = dict.fromkeys(CHEXPERT_COLUMNS)
    for clause in _clauses(report):
        for column, pattern in _NORMAL_PATTERNS.items():
            if pattern.search(clause):
                labels[column] = _combine(labels[column], NEGATIVE)
        for column, pattern in _MENTION_PATTERNS.items():
            for match in pattern.finditer(clause):
                labels[column] = _combine(labels[column], _classify(clause, match.start(), match.end()))
    findings = [c for c in CHEXPERT_COLUMNS if c not in (NO_FINDING, SUPPORT_DEVICES)]
    if not any(labels[c] in (POSITIVE, UNCERTAIN) for c in findings):
        labels[NO_FINDING] = POSITIVE
    return labels


def positive_columns(labels: Mapping[str, Label], *, uncertain_as_positive: bool = False) -> set[str]:
    """Columns labelled positive (and uncertain too when ``uncertain_as_positive``)."""
    wanted = {POSITIVE, UNCERTAIN} if uncertain_as_positive else {POSITIVE}
    return {column for column, value in labels.items() if value in wanted}
