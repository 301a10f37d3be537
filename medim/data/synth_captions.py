"""PathGen-style one-paragraph captions (31-74 words) that state a patch's tissue, density and atypia.

A caption opens with what the image shows, describes the architecture of the tissue type, states the nuclear
density and the atypia grade (one phrase each, from vocabularies that
:func:`medim.data.findings.extract_pathology_findings` reads back), may add stroma/background and negated
features, and closes with an interpretation naming the tissue type. Sentences are added or dropped until the
word count is within PathGen's 31-74 range.
"""

from __future__ import annotations

import numpy as np

from medim.data import findings as F
from medim.data.synth_pathology import PatchCase

MIN_WORDS, MAX_WORDS = 31, 74

_OPENINGS = (
    "The image shows a hematoxylin and eosin stained tissue section.",
    "This high-power field displays a tissue section stained with hematoxylin and eosin.",
    "The microscopic image reveals a fragment of tissue.",
    "The patch depicts a section of tissue at high magnification.",
)
_ARCHITECTURE = {
    F.NORMAL: (
        "Round glands with open lumens are evenly spaced and lined by a single layer of cells with basal nuclei.",
        "Regular glandular structures with preserved polarity sit in a loose supporting stroma.",
    ),
    F.ADENOCARCINOMA: (
        "Irregular, angulated glands are crowded back to back and infiltrate the surrounding stroma.",
        "Distorted glandular structures with stratified epithelium and intraluminal debris are present.",
    ),
    F.SQUAMOUS_CELL_CARCINOMA: (
        "Solid nests of polygonal cells with abundant eosinophilic cytoplasm contain concentric keratin pearls.",
        "Infiltrating sheets and nests of large cells show keratinization with keratin pearl formation.",
    ),
    F.LYMPHOCYTIC_INFILTRATE: (
        "The field is dominated by sheets of lymphocytes with small round nuclei and scant cytoplasm.",
        "Small, round, darkly staining lymphoid cells form a diffuse infiltrate that obscures the stroma.",
    ),
    F.NECROSIS: (
        "Large areas of pale eosinophilic amorphous debris with nuclear dust replace the normal architecture.",
        "The tissue is largely replaced by granular pink debris with scattered karyorrhectic fragments.",
    ),
}
_DENSITY = {
    "low": (
        "Nuclear density is low.",
        "The section is hypocellular, with few scattered nuclei.",
        "Cellularity is low.",
    ),
    "moderate": (
        "Nuclear density is moderate.",
        "The tissue is moderately cellular.",
        "Cellularity is moderate.",
    ),
    "high": ("Nuclear density is high.", "Nuclei are densely packed.", "The field is hypercellular."),
}
_ATYPIA = {
    "mild": ("The nuclei are bland, with mild atypia.", "Only mild nuclear atypia is seen."),
    "moderate": (
        "The nuclei show moderate atypia with some variation in size.",
        "Moderate nuclear atypia is present.",
    ),
    "severe": (
        "The nuclei show marked pleomorphism and severe atypia, with enlarged hyperchromatic forms.",
        "Severe nuclear atypia is evident, with irregular, enlarged nuclei.",
    ),
}
_EXTRAS = {
    F.NORMAL: (
        "There is no evidence of malignancy or necrosis.",
        "The surrounding stroma is pink and fibrous.",
    ),
    F.ADENOCARCINOMA: (
        "The stroma between the glands appears desmoplastic.",
        "Mitotic figures are occasionally seen.",
    ),
    F.SQUAMOUS_CELL_CARCINOMA: (
        "Intercellular bridges are suggested at the edges of the nests.",
        "The intervening stroma is fibrous and pink.",
    ),
    F.LYMPHOCYTIC_INFILTRATE: (
        "There is no gland formation or keratinization.",
        "No necrosis is identified.",
    ),
    F.NECROSIS: ("Ghost outlines of cells are faintly visible.", "Few viable cells remain at the periphery."),
}
_CLOSINGS = {
    F.NORMAL: (
        "Overall, these features are consistent with benign tissue with normal architecture.",
        "The findings are in keeping with normal glandular mucosa.",
    ),
    F.ADENOCARCINOMA: (
        "These features are consistent with invasive adenocarcinoma.",
        "Overall, the appearance suggests a gland-forming carcinoma, most likely adenocarcinoma.",
    ),
    F.SQUAMOUS_CELL_CARCINOMA: (
        "These features are characteristic of keratinizing squamous cell carcinoma.",
        "The findings support a diagnosis of squamous cell carcinoma.",
    ),
    F.LYMPHOCYTIC_INFILTRATE: (
        "Overall, the picture is that of a dense lymphocytic infiltrate.",
        "These features indicate a lymphocytic infiltrate, likely reactive.",
    ),
    F.NECROSIS: (
        "These features are consistent with extensive coagulative necrosis.",
        "The appearance is that of tumour necrosis.",
    ),
}


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _words(sentences: list[str]) -> int:
    return sum(len(s.split()) for s in sentences)


def write_caption(case: PatchCase, rng: np.random.Generator) -> str:
    """One paragraph of 31-74 words describing ``case``."""
    stated = [_pick(rng, _DENSITY[case.density]), _pick(rng, _ATYPIA[case.atypia])]
    if rng.random() < 0.5:
        stated.reverse()
    body = [_pick(rng, _ARCHITECTURE[case.tissue]), *stated]
    extras = list(_EXTRAS[case.tissue])
    rng.shuffle(extras)
    opening = [_pick(rng, _OPENINGS)] if rng.random() < 0.8 else []
    closing = _pick(rng, _CLOSINGS[case.tissue])
    sentences = [*opening, *body, *extras[: int(rng.integers(0, 3))], closing]
    if _words(sentences) > MAX_WORDS and opening:
        sentences = sentences[1:]
    while _words(sentences) > MAX_WORDS and len(sentences) > 4:
        sentences.pop(-2)
    for extra in extras:
        if _words(sentences) >= MIN_WORDS:
            break
        if extra not in sentences:
            sentences.insert(-1, extra)
    if _words(sentences) < MIN_WORDS:
        sentences.insert(0, _OPENINGS[1])
    return " ".join(sentences)
