"""The synthetic finding vocabulary and a rule-based extractor that reads it back from text.

The canonical names below are shared by the generators (``synth_cxr``, ``synth_reports``,
``synth_pathology``) and by the extractor, so that a written report or caption can be scored against the
ground truth it was drawn from, and a *generated* report can be scored against the findings of its image.

Chest X-ray: :func:`extract_cxr_findings` returns the set of positive findings stated in the FINDINGS and
IMPRESSION sections (the whole text when it has no headers), with NegEx-style negation: a pre-negation cue
("no", "without", "negative for", "free of", "absence of") negates the mentions after it, a post-negation cue
("is not seen", "has resolved", ...) negates the mentions before it, within one clause (a clause ends at a
sentence end, ";", "but", "however", "although", "though", "except").

``NO_FINDING`` follows the CheXpert convention: it is present when no *pathology* is stated (support devices
may coexist with it).

Pathology: :func:`extract_pathology_findings` returns ``{"tissue": ..., "density": ..., "atypia": ...}``
(each ``None`` when the caption does not say).
"""

from __future__ import annotations

import re

CARDIOMEGALY = "cardiomegaly"
LEFT_PLEURAL_EFFUSION = "left_pleural_effusion"
RIGHT_PLEURAL_EFFUSION = "right_pleural_effusion"
LEFT_PNEUMOTHORAX = "left_pneumothorax"
RIGHT_PNEUMOTHORAX = "right_pneumothorax"
CONSOLIDATION = "consolidation"
NODULE = "nodule"
SUPPORT_DEVICE = "support_device"
NO_FINDING = "no_finding"

CXR_PATHOLOGIES = (
    CARDIOMEGALY,
    LEFT_PLEURAL_EFFUSION,
    RIGHT_PLEURAL_EFFUSION,
    LEFT_PNEUMOTHORAX,
    RIGHT_PNEUMOTHORAX,
    CONSOLIDATION,
    NODULE,
)
"""Findings that are disease (CheXpert's "No Finding" is false when any is present)."""

CXR_FINDINGS = (*CXR_PATHOLOGIES, SUPPORT_DEVICE, NO_FINDING)
"""Every canonical chest X-ray finding name."""

CHEXPERT_COLUMNS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
"""The 14 label columns of ``mimic-cxr-2.0.0-chexpert.csv``, in the file's order."""

CHEXPERT_OF_FINDING: dict[str, tuple[str, ...]] = {
    CARDIOMEGALY: ("Cardiomegaly",),
    LEFT_PLEURAL_EFFUSION: ("Pleural Effusion",),
    RIGHT_PLEURAL_EFFUSION: ("Pleural Effusion",),
    LEFT_PNEUMOTHORAX: ("Pneumothorax",),
    RIGHT_PNEUMOTHORAX: ("Pneumothorax",),
    CONSOLIDATION: ("Consolidation", "Lung Opacity"),
    NODULE: ("Lung Lesion",),
    SUPPORT_DEVICE: ("Support Devices",),
    NO_FINDING: ("No Finding",),
}
"""CheXpert columns that are positive (1.0) when a canonical finding is present."""

NORMAL = "normal"
ADENOCARCINOMA = "adenocarcinoma"
SQUAMOUS_CELL_CARCINOMA = "squamous_cell_carcinoma"
LYMPHOCYTIC_INFILTRATE = "lymphocytic_infiltrate"
NECROSIS = "necrosis"
TISSUE_TYPES = (NORMAL, ADENOCARCINOMA, SQUAMOUS_CELL_CARCINOMA, LYMPHOCYTIC_INFILTRATE, NECROSIS)
DENSITIES = ("low", "moderate", "high")
ATYPIA_GRADES = ("mild", "moderate", "severe")
PATHOLOGY_KEYS = ("tissue", "density", "atypia")
"""Keys of a pathology ground-truth record and of :func:`extract_pathology_findings`' result."""

_SIZE = r"(?:(?:small|moderate|large|trace|tiny|layering|moderate-sized|sizable|new|persistent|apical|"
_SIZE += r"apicolateral|basilar|lateral|pleural|partially loculated)[ ,]+)*"
_SIDED = r"(?:-sided)?\s+"

_CXR_MENTIONS: tuple[tuple[frozenset[str], re.Pattern[str]], ...] = tuple(
    (frozenset(names), re.compile(pattern))
    for names, pattern in (
        (
            {CARDIOMEGALY},
            r"\bcardiomegaly\b|\b(?:heart|cardiac silhouette|heart size) (?:is|appears) "
            r"(?:(?:mildly|moderately|markedly|severely) )?enlarged\b|\benlarge(?:d|ment of the) "
            r"(?:heart|cardiac silhouette)\b",
        ),
        (
            {LEFT_PLEURAL_EFFUSION},
            rf"\bleft{_SIDED}{_SIZE}effusions?\b|\beffusions? (?:is seen )?on the left\b",
        ),
        (
            {RIGHT_PLEURAL_EFFUSION},
            rf"\bright{_SIDED}{_SIZE}effusions?\b|\beffusions? (?:is seen )?on the right\b",
        ),
        ({LEFT_PLEURAL_EFFUSION, RIGHT_PLEURAL_EFFUSION}, rf"\bbilateral\s+{_SIZE}effusions\b"),
        (
            {LEFT_PNEUMOTHORAX},
            rf"\bleft{_SIDED}{_SIZE}pneumothorax\b|\bpneumothorax (?:is seen )?on the left\b",
        ),
        (
            {RIGHT_PNEUMOTHORAX},
            rf"\bright{_SIDED}{_SIZE}pneumothorax\b|\bpneumothorax (?:is seen )?on the right\b",
        ),
        ({LEFT_PNEUMOTHORAX, RIGHT_PNEUMOTHORAX}, rf"\bbilateral\s+{_SIZE}pneumothoraces\b"),
        ({CONSOLIDATION}, r"\bconsolidation\b|\bconsolidative opacity\b|\bairspace opacity\b"),
        ({NODULE}, r"\bnodules?\b|\bnodular opacity\b"),
        (
            {SUPPORT_DEVICE},
            r"\b(?:endotracheal|et|enteric|nasogastric|ng|feeding) tube\b|\bcentral venous catheter\b|"
            r"\bpicc\b|\bpacemaker\b|\bpacer\b|\bsupport devices?\b|\blines and tubes\b|\blines or tubes\b",
        ),
    )
)

_PRE_NEGATION = re.compile(r"\b(?:no|without|negative for|free of|absence of)\b")
_POST_NEGATION = re.compile(
    r"\b(?:is|are) (?:not|no longer) (?:seen|identified|present|appreciated|evident)\b|\bha(?:s|ve) resolved\b"
)
_CLAUSE_END = re.compile(r";|\bbut\b|\bhowever\b|\balthough\b|\bthough\b|\bexcept\b")
_SENTENCE_END = re.compile(r"(?<!\d)\.(?!\d)|\n\s*\n|(?:^|\s)\d+\.\s")
_SECTION = re.compile(r"^\s*([A-Z][A-Z ()/,-]+):", re.MULTILINE)


def report_sections(text: str) -> dict[str, str]:
    """Split a MIMIC-style report on its upper-case ``HEADER:`` lines; keys are lower-case header names.

    Text before the first header is keyed ``""``.
    """
    sections: dict[str, str] = {}
    matches = list(_SECTION.finditer(text))
    sections[""] = text[: matches[0].start()] if matches else text
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        sections[match.group(1).strip().lower()] = text[match.end() : end]
    return sections


def _clinical_text(report_text: str) -> str:
    sections = report_sections(report_text)
    wanted = [sections[k] for k in ("findings", "impression", "findings and impression") if k in sections]
    return "\n\n".join(wanted) if wanted else report_text


def _clauses(text: str) -> list[str]:
    clauses: list[str] = []
    for sentence in _SENTENCE_END.split(text.lower()):
        clauses.extend(_CLAUSE_END.split(" ".join(sentence.split())))
    return [c for c in clauses if c.strip()]


def _mentions(clause: str, table: tuple[tuple[frozenset[str], re.Pattern[str]], ...]) -> set[str]:
    """Positive (non-negated) mentions in one clause."""
    pre = [m.start() for m in _PRE_NEGATION.finditer(clause)]
    post = [m.start() for m in _POST_NEGATION.finditer(clause)]
    found: set[str] = set()
    for names, pattern in table:
        for match in pattern.finditer(clause):
            negated = any(p < match.start() for p in pre) or any(p >= match.end() for p in post)
            if not negated:
                found |= names
    return found


def extract_cxr_findings(report_text: str) -> set[str]:
    """Canonical chest X-ray findings (names from :data:`CXR_FINDINGS`) stated positively in a report."""
    found: set[str] = set()
    for clause in _clauses(_clinical_text(report_text)):
        found |= _mentions(clause, _CXR_MENTIONS)
    if not found & set(CXR_PATHOLOGIES):
        found.add(NO_FINDING)
    return found


def _table(patterns: dict[str, str]) -> tuple[tuple[frozenset[str], re.Pattern[str]], ...]:
    return tuple((frozenset({name}), re.compile(p)) for name, p in patterns.items())


_TISSUE = _table(
    {
        SQUAMOUS_CELL_CARCINOMA: r"\bsquamous (?:cell )?carcinoma\b|\bkeratin pearls?\b",
        ADENOCARCINOMA: r"\badenocarcinoma\b|\bgland-forming carcinoma\b",
        NECROSIS: r"\bnecrosis\b|\bnecrotic\b",
        LYMPHOCYTIC_INFILTRATE: r"\blymphocytic infiltrat\w*|\blymphoid infiltrat\w*|\bsheets of lymphocytes\b",
        NORMAL: r"\bnormal (?:tissue|mucosa|glandular|architecture)\b|\bbenign\b",
    }
)
"""Tissue patterns in priority order: the first type with a positive mention wins."""

_DENSITY = _table(
    {
        "low": r"\blow (?:nuclear density|cellularity)\b|\b(?:nuclear density|cellularity) is low\b|"
        r"\bsparse(?:ly)? (?:cellular|nuclei|distributed)\b|"
        r"\bhypocellular\b|\bpaucicellular\b|\bfew scattered nuclei\b",
        "moderate": r"\bmoderate (?:nuclear density|cellularity)\b|\b(?:nuclear density|cellularity) is moderate\b|"
        r"\bmoderately (?:cellular|dense)\b|"
        r"\bintermediate cellularity\b",
        "high": r"\bhigh (?:nuclear density|cellularity)\b|\b(?:nuclear density|cellularity) is high\b|"
        r"\bhypercellular\b|\bdensely packed\b|"
        r"\bcrowded nuclei\b",
    }
)

_ATYPIA = _table(
    {
        "mild": r"\b(?:mild|minimal|slight) (?:nuclear |cytologic )?atypia\b|\bbland\b",
        "moderate": r"\bmoderate (?:nuclear |cytologic )?(?:atypia|pleomorphism)\b|\bmoderately atypical\b",
        "severe": r"\b(?:severe|marked|striking) (?:nuclear |cytologic )?(?:atypia|pleomorphism)\b|"
        r"\bmarkedly (?:atypical|pleomorphic)\b|\bbizarre nuclei\b",
    }
)


def _first_stated(
    clauses: list[str], table: tuple[tuple[frozenset[str], re.Pattern[str]], ...]
) -> str | None:
    stated: set[str] = set()
    for clause in clauses:
        stated |= _mentions(clause, table)
    for names, _ in table:
        (name,) = names
        if name in stated:
            return name
    return None


def extract_pathology_findings(caption: str) -> dict[str, str | None]:
    """Tissue type, nuclear density and atypia grade stated in a PathGen-style caption.

    Returns ``{"tissue": one of TISSUE_TYPES | None, "density": one of DENSITIES | None,
    "atypia": one of ATYPIA_GRADES | None}``. Negated mentions ("without necrosis") are ignored; when several
    tissue types are stated the most specific (carcinoma before necrosis before infiltrate before normal) wins.
    """
    clauses = _clauses(caption)
    return {
        "tissue": _first_stated(clauses, _TISSUE),
        "density": _first_stated(clauses, _DENSITY),
        "atypia": _first_stated(clauses, _ATYPIA),
    }
