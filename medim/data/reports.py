"""Radiology report sectioning and the choice of training text.

MIMIC-style free-text reports are split into named sections the way the MIT-LCP ``section_parser`` does it:

* Addenda sit at the top, separated from the original report by a line made only of underscores; the
  original report is what follows the last such line (the addenda are kept apart in
  :attr:`ReportSections.addendum`).
* A section header is a line that starts (after optional indentation) with upper-case words and a colon,
  e.g. ``" FINDINGS:"`` (the MIT-LCP pattern ``\\n ([A-Z ()/,-]+):\\s``, tolerant of indentation).
  Header names are normalised: ``"FINDINGS AND IMPRESSION"``, ``"FINDINGS/IMPRESSION"`` and
  ``"CONCLUSION"`` become ``impression``, ``"CLINICAL HISTORY"`` becomes ``history``, and so on.
* When a report has neither a findings nor an impression section, the last paragraph (up to the next header)
  is the fallback, unless that paragraph opens with the header of a section that carries no imaging findings
  (indication, history, comparison, notification, ...).

De-identification blanks (``___``) are kept verbatim: they are a token the model learns, not text to fill.
INDICATION, HISTORY and the other non-finding sections are never a training target (they carry ages, names
and clinical questions): :class:`TextConfig` refuses them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from medim.config import ConfigError

HEADER = re.compile(r"\n[ \t]*([A-Z][A-Z ()/,-]*):\s")
ADDENDUM_SEPARATOR = re.compile(r"^[ \t]*_{10,}[ \t]*$", re.MULTILINE)
PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")

SECTION_ALIASES: dict[str, str] = {
    "findings": "findings",
    "finding": "findings",
    "findngs": "findings",
    "findins": "findings",
    "finidngs": "findings",
    "reference findings": "findings",
    "chest, two views": "findings",
    "impression": "impression",
    "impressions": "impression",
    "impresion": "impression",
    "impresson": "impression",
    "impession": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
    "findings and impression": "impression",
    "findings/impression": "impression",
    "findings / impression": "impression",
    "findings/ impression": "impression",
    "indication": "indication",
    "indications": "indication",
    "clinical indication": "indication",
    "reason for examination": "indication",
    "reason for exam": "indication",
    "history": "history",
    "clinical history": "history",
    "clinical information": "history",
    "patient history": "history",
    "examination": "examination",
    "exam": "examination",
    "type of examination": "examination",
    "technique": "technique",
    "comparison": "comparison",
    "comparisons": "comparison",
    "comparison exam": "comparison",
    "comparison film": "comparison",
    "reference exam": "comparison",
    "notification": "notification",
    "recommendation": "recommendations",
    "recommendations": "recommendations",
    "recommendation(s)": "recommendations",
    "wet read": "wet read",
    "wetread": "wet read",
    "addendum": "addendum",
    "date": "date",
    "comment": "comment",
}

# Sections that never become training text (and never feed the last-paragraph fallback).
NON_TARGET_SECTIONS = frozenset(
    {
        "indication",
        "history",
        "examination",
        "technique",
        "comparison",
        "notification",
        "recommendations",
        "wet read",
        "addendum",
        "date",
        "comment",
    }
)
TARGETS = ("findings", "impression", "last_paragraph")
COMBINE_MODES = ("first", "all")


def normalise_section_name(raw: str) -> str:
    """Map a header as written (``"FINDINGS AND IMPRESSION"``) to its canonical name (``"impression"``)."""
    name = " ".join(raw.lower().split())
    return SECTION_ALIASES.get(name, name)


def clean_text(text: str) -> str:
    """Join wrapped lines and collapse whitespace; de-identification blanks ``___`` are kept as they are."""
    return " ".join(text.split())


@dataclass(frozen=True)
class ReportSections:
    """A parsed report.

    ``sections`` maps canonical names (``"findings"``, ``"indication"``, ...; ``"preamble"`` for the text
    before the first header) to cleaned text; repeated headers are concatenated. ``last_paragraph`` is the
    cleaned last paragraph of the original report, or None when it lies in a non-target section.
    """

    sections: dict[str, str]
    last_paragraph: str | None
    addendum: str | None

    @property
    def findings(self) -> str | None:
        return self.sections.get("findings") or None

    @property
    def impression(self) -> str | None:
        return self.sections.get("impression") or None


def _split_addendum(text: str) -> tuple[str | None, str]:
    separators = list(ADDENDUM_SEPARATOR.finditer(text))
    if not separators:
        return None, text
    last = separators[-1]
    addendum = clean_text(ADDENDUM_SEPARATOR.sub(" ", text[: last.start()]))
    return addendum or None, text[last.end() :]


@dataclass(frozen=True)
class _Span:
    """One header: its canonical name, where its line starts, where its text starts and ends."""

    name: str
    start: int
    content_start: int
    end: int


def _last_paragraph(body: str, spans: list[_Span]) -> str | None:
    start = 0
    for brk in PARAGRAPH_BREAK.finditer(body):
        if body[brk.end() :].strip():
            start = brk.end()
    opening = [span for span in spans if span.start == max(start - 1, 0)]
    if opening and opening[0].name in NON_TARGET_SECTIONS:
        return None
    begin = opening[0].content_start if opening else start
    later = [span.start for span in spans if span.start >= begin]
    return clean_text(body[begin : later[0] if later else len(body)]) or None


def parse_report(text: str) -> ReportSections:
    """Split a free-text report into canonical sections, addenda and the last-paragraph fallback."""
    addendum, body = _split_addendum(text.replace("\r\n", "\n").replace("\r", "\n"))
    body = "\n" + body
    headers = list(HEADER.finditer(body))
    spans = [
        _Span(
            name=normalise_section_name(match.group(1)),
            start=match.start(),
            content_start=match.end(),
            end=headers[i + 1].start() if i + 1 < len(headers) else len(body),
        )
        for i, match in enumerate(headers)
    ]
    sections: dict[str, str] = {}
    preamble = clean_text(body[: spans[0].start] if spans else body)
    if preamble:
        sections["preamble"] = preamble
    for span in spans:
        content = clean_text(body[span.content_start : span.end])
        if content:
            sections[span.name] = f"{sections[span.name]} {content}" if span.name in sections else content
    return ReportSections(sections=sections, last_paragraph=_last_paragraph(body, spans), addendum=addendum)


@dataclass
class TextConfig:
    """Which report sections form the training text.

    ``sections`` are tried in order; with ``combine="first"`` the first present one is the text, with
    ``combine="all"`` every present one is joined in the given order. When none is present and
    ``last_paragraph_fallback`` is set, the report's last paragraph is used (MIT-LCP behaviour).
    Allowed section names: findings, impression, last_paragraph.
    """

    sections: list[str] = field(default_factory=lambda: ["findings", "impression"])
    combine: str = "first"
    last_paragraph_fallback: bool = True

    def __post_init__(self) -> None:
        if not self.sections:
            raise ConfigError(
                "report.sections=[] is invalid: allowed a non-empty list of " + ", ".join(TARGETS)
            )
        for name in self.sections:
            if name not in TARGETS:
                extra = " (it is never training text)" if name in NON_TARGET_SECTIONS else ""
                raise ConfigError(
                    f"report.sections contains {name!r}, which is invalid: allowed {', '.join(TARGETS)}{extra}"
                )
        if len(set(self.sections)) != len(self.sections):
            raise ConfigError(f"report.sections={self.sections!r} is invalid: allowed names without repeats")
        if self.combine not in COMBINE_MODES:
            raise ConfigError(f"report.combine={self.combine!r} is invalid: allowed one of first, all")


def training_text(report: ReportSections, config: TextConfig) -> str | None:
    """The text a model trains on for ``report`` under ``config``, or None when no chosen section exists."""
    available = {
        "findings": report.findings,
        "impression": report.impression,
        "last_paragraph": report.last_paragraph,
    }
    chosen = [text for name in config.sections if (text := available[name])]
    if chosen:
        return chosen[0] if config.combine == "first" else " ".join(chosen)
    if config.last_paragraph_fallback and report.last_paragraph:
        return report.last_paragraph
    return None
