"""MIMIC-style free-text chest X-ray reports that state exactly the drawn findings.

A report has the MIMIC layout (centred ``FINAL REPORT`` line, ``EXAMINATION:``, ``INDICATION:`` with ``___``
for removed PHI, optional ``TECHNIQUE:``, ``COMPARISON:``, ``FINDINGS:``, ``IMPRESSION:``), lines wrapped at 79
characters and indented by one space. Every positive finding is stated in FINDINGS and every pathology again in
IMPRESSION; some absent findings are explicitly negated (varied cues, sometimes inside a positive sentence);
phrasing and sentence order vary. The CheXpert-style labels of the study follow from what was written: 1.0 for
stated findings, 0.0 for negated ones, -1.0 for hedged pneumonia, blank otherwise.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import numpy as np

from medim.data import findings as F
from medim.data.synth_cxr import CxrCase

WIDTH = 79

EXAMINATIONS = {
    ("PA", True): "CHEST (PA AND LAT)",
    ("PA", False): "CHEST (PA)",
    ("AP", True): "CHEST (AP AND LAT)",
    ("AP", False): "CHEST (PORTABLE AP)",
}

_INDICATIONS = (
    "___ year old {sex} with cough and fever, evaluate for pneumonia.",
    "___ year old {sex} with shortness of breath.",
    "History: ___{s} with chest pain",
    "___ year old {sex} status post line placement, assess position.",
    "___{s} with hypoxia, evaluate for acute process.",
    "Pre-operative evaluation.",
    "___ year old {sex} with dyspnea on exertion // ? effusion",
)
_DEVICE_SENTENCES = {
    "endotracheal tube": (
        "An endotracheal tube terminates approximately {cm} cm above the carina.",
        "Endotracheal tube is in standard position, {cm} cm above the carina.",
    ),
    "nasogastric tube": (
        "A nasogastric tube courses below the diaphragm with the tip in the stomach.",
        "Enteric tube terminates in the stomach.",
    ),
    "right internal jugular catheter": (
        "Right internal jugular central venous catheter terminates in the mid SVC.",
        "A right IJ central venous catheter ends at the cavoatrial junction.",
    ),
    "pacemaker": (
        "Left chest wall pacemaker with leads terminating in the right atrium and right ventricle.",
        "A pacemaker device overlies the left chest with leads in expected position.",
    ),
}


@dataclass(frozen=True)
class CxrReport:
    """A written report and the CheXpert-style labels it implies (column -> 1.0 / 0.0 / -1.0; absent = blank)."""

    text: str
    chexpert: dict[str, float]


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _side_phrase(
    rng: np.random.Generator,
    left: str | None,
    right: str | None,
    noun: str,
    plural: str,
    *,
    short: bool = False,
) -> str:
    """A positive sentence for a sided finding (``left``/``right`` hold sizes or None); ``short``: a noun phrase."""
    if left and right:
        return (
            f"Bilateral {plural}."
            if short
            else _pick(rng, (f"There are bilateral {plural}.", f"Bilateral {plural} are present."))
        )
    side, size = ("left", left) if left else ("right", str(right))
    if short:
        return _pick(rng, (f"{size.capitalize()} {side} {noun}.", f"{side.capitalize()} {noun}."))
    return _pick(
        rng,
        (
            f"There is a {size} {side} {noun}.",
            f"{size.capitalize()} {side}-sided {noun} is present.",
            f"A {size} {noun} is seen on the {side}.",
            f"{side.capitalize()} {noun}, {size} in size.",
        ),
    )


class _Writer:
    """Collects statements and the CheXpert labels they imply."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.findings: list[str] = []
        self.impression: list[str] = []
        self.labels: dict[str, float] = {}

    def positive(self, text: str, impression: str | None, finding: str) -> None:
        """State a canonical ``finding``; its CheXpert columns become 1.0."""
        self.findings.append(text)
        if impression:
            self.impression.append(impression)
        for column in F.CHEXPERT_OF_FINDING[finding]:
            self.labels[column] = 1.0

    def negative(self, text: str, *columns: str) -> None:
        self.findings.append(text)
        for column in columns:
            self.labels.setdefault(column, 0.0)


def _heart(w: _Writer, case: CxrCase) -> None:
    rng = w.rng
    if case.cardiomegaly:
        g = case.cardiomegaly
        adverb = {"mild": "mildly", "moderate": "moderately", "severe": "markedly"}[g]
        text = _pick(rng, (f"The heart is {adverb} enlarged.", f"{g.capitalize()} cardiomegaly is present."))
        w.positive(text, _pick(rng, (f"{g.capitalize()} cardiomegaly.", "Cardiomegaly.")), F.CARDIOMEGALY)
    elif rng.random() < 0.8:
        text = _pick(
            rng,
            ("The heart size is normal.", "Heart size is within normal limits.", "No cardiomegaly."),
        )
        w.negative(text, "Cardiomegaly")
        if rng.random() < 0.5:
            w.negative("The mediastinal and hilar contours are unremarkable.", "Enlarged Cardiomediastinum")


def _pleura(w: _Writer, case: CxrCase) -> None:
    rng = w.rng
    eff = case.left_effusion or case.right_effusion
    ptx = case.left_pneumothorax or case.right_pneumothorax
    if eff:
        text = _side_phrase(
            rng, case.left_effusion, case.right_effusion, "pleural effusion", "pleural effusions"
        )
        if not ptx and rng.random() < 0.4:
            text = text[:-1] + _pick(rng, (" without pneumothorax.", ", but no pneumothorax."))
            w.labels["Pneumothorax"] = 0.0
        imp = _side_phrase(
            rng, case.left_effusion, case.right_effusion, "pleural effusion", "pleural effusions", short=True
        )
        w.positive(text, imp, F.LEFT_PLEURAL_EFFUSION if case.left_effusion else F.RIGHT_PLEURAL_EFFUSION)
    if ptx:
        text = _side_phrase(
            rng, case.left_pneumothorax, case.right_pneumothorax, "pneumothorax", "pneumothoraces"
        )
        imp = _side_phrase(
            rng, case.left_pneumothorax, case.right_pneumothorax, "pneumothorax", "pneumothoraces", short=True
        )
        w.positive(text, imp, F.LEFT_PNEUMOTHORAX if case.left_pneumothorax else F.RIGHT_PNEUMOTHORAX)
    if not eff and not ptx:
        text = _pick(
            rng,
            (
                "No pleural effusion or pneumothorax.",
                "There is no pleural effusion or pneumothorax.",
                "No pleural effusion is seen, and a pneumothorax is not identified.",
                "The costophrenic angles are sharp without effusion. No pneumothorax.",
            ),
        )
        w.negative(text, "Pleural Effusion", "Pneumothorax")
    elif not eff:
        w.negative(_pick(rng, ("No pleural effusion.", "There is no pleural effusion.")), "Pleural Effusion")
    elif not ptx and "Pneumothorax" not in w.labels:
        w.negative(_pick(rng, ("No pneumothorax.", "A pneumothorax is not seen.")), "Pneumothorax")


def _lungs(w: _Writer, case: CxrCase) -> None:
    rng = w.rng
    if case.consolidation_lobe:
        lobe = case.consolidation_lobe
        text = _pick(
            rng,
            (
                f"There is consolidation in the {lobe}.",
                f"{lobe.capitalize()} consolidation is present, concerning for pneumonia.",
                f"Focal airspace opacity in the {lobe} is compatible with consolidation.",
            ),
        )
        w.positive(text, f"{lobe.capitalize()} consolidation, which may reflect pneumonia.", F.CONSOLIDATION)
        w.labels["Pneumonia"] = -1.0
    elif rng.random() < 0.85:
        text = _pick(
            rng,
            (
                "The lungs are clear without focal consolidation.",
                "No focal consolidation.",
                "There is no focal consolidation to suggest pneumonia.",
            ),
        )
        w.negative(text, "Consolidation", *(("Pneumonia",) if "pneumonia" in text else ()))
    if case.nodule:
        nod = case.nodule
        size = f"{nod.size_mm} mm" if nod.size_mm < 10 or rng.random() < 0.5 else f"{nod.size_mm / 10:.1f} cm"
        text = _pick(
            rng,
            (
                f"A {size} nodule projects over the {nod.side} {nod.zone} lung.",
                f"There is a {size} nodular opacity in the {nod.side} {nod.zone} lung zone.",
                f"A rounded {size} nodule is seen in the {nod.side} {nod.zone} lung.",
            ),
        )
        imp = f"{size.capitalize()} {nod.side} {nod.zone} lung nodule; recommend chest CT for further evaluation."
        w.positive(text, imp, F.NODULE)
    elif rng.random() < 0.3:
        w.negative("No suspicious pulmonary nodules are seen.", "Lung Lesion")
    if rng.random() < 0.5:
        w.negative(_pick(rng, ("No pulmonary edema.", "There is no pulmonary vascular congestion.")), "Edema")


def write_report(case: CxrCase, *, view: str, lateral: bool, rng: np.random.Generator) -> CxrReport:
    """Write a report for ``case`` acquired as ``view`` ("PA" or "AP"), with a lateral view if ``lateral``."""
    w = _Writer(rng)
    for device in case.devices:
        text = _pick(rng, _DEVICE_SENTENCES[device]).format(cm=int(rng.integers(3, 6)))
        w.positive(text, None, F.SUPPORT_DEVICE)
    order = [_heart, _pleura, _lungs]
    if rng.random() < 0.4:
        order = [order[i] for i in rng.permutation(3)]
    for section in order:
        section(w, case)
    if rng.random() < 0.4:
        w.negative("No acute osseous abnormality.", "Fracture")
    pathology = case.findings & set(F.CXR_PATHOLOGIES)
    if not pathology:
        w.labels.update(dict.fromkeys(F.CHEXPERT_OF_FINDING[F.NO_FINDING], 1.0))
        w.impression = [_pick(rng, ("No acute cardiopulmonary process.", "No acute intrathoracic process."))]
    if case.devices and rng.random() < 0.5:
        w.impression.append("Support devices in standard position.")
    impression = w.impression
    if len(impression) > 1 and rng.random() < 0.5:
        impression = [f"{i}. {text}" for i, text in enumerate(impression, 1)]
    sex = _pick(rng, ("man", "woman"))
    indication = _pick(rng, _INDICATIONS).format(sex=sex, s="M" if sex == "man" else "F")
    technique = (
        f"Chest {view} and lateral views."
        if lateral
        else f"{'Portable ' if view == 'AP' else ''}{view} view."
    )
    sections = [
        ("EXAMINATION", EXAMINATIONS[(view, lateral)]),
        ("INDICATION", indication),
        *([("TECHNIQUE", technique)] if rng.random() < 0.5 else []),
        ("COMPARISON", _pick(rng, ("___.", "None.", "Chest radiograph from ___."))),
        ("FINDINGS", " ".join(w.findings)),
        ("IMPRESSION", "\n".join(impression)),
    ]
    return CxrReport(text=_layout(sections), chexpert=w.labels)


def _wrap(text: str) -> list[str]:
    lines: list[str] = []
    for paragraph in text.split("\n"):
        lines.extend(" " + line for line in textwrap.wrap(paragraph, WIDTH - 1))
    return lines


def _layout(sections: list[tuple[str, str]]) -> str:
    """MIMIC layout: short sections inline after the header, FINDINGS/IMPRESSION as indented paragraphs."""
    lines = [" " * 33 + "FINAL REPORT"]
    for header, body in sections:
        if header in ("FINDINGS", "IMPRESSION"):
            lines += [f" {header}:", " "]
            lines += _wrap(body)
        else:
            lines += _wrap(f"{header}:  {body}")
        lines.append(" ")
    return "\n".join(lines).rstrip() + "\n"
