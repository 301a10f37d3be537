"""The rule-based finding extractor: vocabulary, negation, sections, and recovery of generated text."""

import numpy as np
import pytest

from medim.data import findings as F
from medim.data.synth_captions import MAX_WORDS, MIN_WORDS, write_caption
from medim.data.synth_cxr import sample_case
from medim.data.synth_mimic import rng_for
from medim.data.synth_pathology import sample_patch_case
from medim.data.synth_reports import write_report


def test_vocabulary_is_consistent():
    assert len(F.CHEXPERT_COLUMNS) == 14
    assert set(F.CHEXPERT_OF_FINDING) == set(F.CXR_FINDINGS)
    assert all(set(cols) <= set(F.CHEXPERT_COLUMNS) for cols in F.CHEXPERT_OF_FINDING.values())
    assert len(set(F.CXR_FINDINGS)) == len(F.CXR_FINDINGS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("No pleural effusion or pneumothorax. Heart size is normal.", {F.NO_FINDING}),
        ("There is a small left pleural effusion without pneumothorax.", {F.LEFT_PLEURAL_EFFUSION}),
        ("Moderate right-sided pleural effusion is present.", {F.RIGHT_PLEURAL_EFFUSION}),
        ("Bilateral pleural effusions are present.", {F.LEFT_PLEURAL_EFFUSION, F.RIGHT_PLEURAL_EFFUSION}),
        ("A small pneumothorax is seen on the right.", {F.RIGHT_PNEUMOTHORAX}),
        ("No pleural effusion, but there is a large left pneumothorax.", {F.LEFT_PNEUMOTHORAX}),
        ("A pneumothorax is not identified. The heart is moderately enlarged.", {F.CARDIOMEGALY}),
        ("The heart is not enlarged. No focal consolidation.", {F.NO_FINDING}),
        ("Right lower lobe consolidation, which may reflect pneumonia.", {F.CONSOLIDATION}),
        ("There is a 1.2 cm nodular opacity in the left upper lung zone.", {F.NODULE}),
        ("No suspicious pulmonary nodules are seen.", {F.NO_FINDING}),
        ("Endotracheal tube terminates 4 cm above the carina.", {F.SUPPORT_DEVICE, F.NO_FINDING}),
        (
            "Left chest wall pacemaker with leads in the right atrium and right ventricle.",
            {F.SUPPORT_DEVICE, F.NO_FINDING},
        ),
        ("1. Cardiomegaly.\n2. Left pleural\neffusion.", {F.CARDIOMEGALY, F.LEFT_PLEURAL_EFFUSION}),
    ],
)
def test_extract_cxr_sentences(text, expected):
    assert F.extract_cxr_findings(text) == expected


def test_extract_cxr_reads_findings_and_impression_only():
    report = (
        "                                 FINAL REPORT\n"
        " EXAMINATION:  CHEST (PA AND LAT)\n \n"
        " INDICATION:  ___ year old man with left pneumothorax, evaluate.\n \n"
        " FINDINGS:\n \n The lungs are clear without focal consolidation. No pneumothorax.\n \n"
        " IMPRESSION:\n \n No acute cardiopulmonary process.\n"
    )
    assert F.extract_cxr_findings(report) == {F.NO_FINDING}
    assert set(F.report_sections(report)) >= {"examination", "indication", "findings", "impression"}


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        (
            "Round glands line a fibrous stroma. Nuclear density is low. The nuclei are bland, with mild atypia. "
            "There is no evidence of malignancy or necrosis. Consistent with benign tissue.",
            {"tissue": F.NORMAL, "density": "low", "atypia": "mild"},
        ),
        (
            "Nests of large cells with keratin pearls; nuclei are densely packed and show severe atypia.",
            {"tissue": F.SQUAMOUS_CELL_CARCINOMA, "density": "high", "atypia": "severe"},
        ),
        (
            "Sheets of lymphocytes. No necrosis is identified. The tissue is moderately cellular.",
            {"tissue": F.LYMPHOCYTIC_INFILTRATE, "density": "moderate", "atypia": None},
        ),
        ("An unremarkable image.", {"tissue": None, "density": None, "atypia": None}),
    ],
)
def test_extract_pathology_captions(caption, expected):
    assert F.extract_pathology_findings(caption) == expected


def test_extractor_recovers_every_generated_report():
    prevalence = dict.fromkeys((*F.CXR_PATHOLOGIES, F.SUPPORT_DEVICE), 0.3)
    for i in range(400):
        rng = rng_for(11, "report", i)
        case = sample_case(rng, prevalence)
        report = write_report(case, view="AP" if i % 3 else "PA", lateral=bool(i % 2), rng=rng)
        assert F.extract_cxr_findings(report.text) == set(case.findings), report.text


def test_extractor_recovers_every_generated_caption():
    mix = dict.fromkeys(F.TISSUE_TYPES, 1.0)
    seen = set()
    for i in range(400):
        rng = np.random.default_rng(i)
        case = sample_patch_case(rng, mix)
        caption = write_caption(case, rng)
        assert MIN_WORDS <= len(caption.split()) <= MAX_WORDS, caption
        assert "\n" not in caption
        assert F.extract_pathology_findings(caption) == case.as_dict(), caption
        seen.add((case.tissue, case.density, case.atypia))
    assert {t for t, _, _ in seen} == set(F.TISSUE_TYPES)
