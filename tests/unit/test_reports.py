"""Report sectioning and training-text choice (texts below are invented, MIMIC-like in form only)."""

import pytest

from medim.config import ConfigError
from medim.data.reports import (
    TextConfig,
    clean_text,
    normalise_section_name,
    parse_report,
    training_text,
)

FULL = (
    "                                 FINAL REPORT\n"
    " EXAMINATION:  CHEST (PA AND LAT)\n"
    " \n"
    " INDICATION:  ___ year old man with fever, eval for infiltrate.\n"
    " \n"
    " TECHNIQUE:  Chest PA and lateral\n"
    " \n"
    " COMPARISON:  ___\n"
    " \n"
    " FINDINGS:\n"
    " \n"
    " Heart size is mildly enlarged.  There is a small left pleural\n"
    " effusion.  No pneumothorax.  Dr. ___ reviewed.\n"
    " \n"
    " IMPRESSION:\n"
    " \n"
    " Small left effusion.\n"
)


def test_full_report_sections():
    r = parse_report(FULL)
    assert (
        r.findings
        == "Heart size is mildly enlarged. There is a small left pleural effusion. No pneumothorax. Dr. ___ reviewed."
    )
    assert r.impression == "Small left effusion."
    assert r.sections["indication"] == "___ year old man with fever, eval for infiltrate."
    assert r.sections["examination"] == "CHEST (PA AND LAT)"
    assert r.sections["comparison"] == "___"
    assert r.sections["preamble"] == "FINAL REPORT"
    assert r.addendum is None
    assert training_text(r, TextConfig()) == r.findings


def test_deid_blank_is_kept_as_a_token():
    assert clean_text("Dr.  ___\n was paged at ___ ") == "Dr. ___ was paged at ___"


@pytest.mark.parametrize(
    ("header", "canonical"),
    [
        ("FINDINGS AND IMPRESSION", "impression"),
        ("FINDINGS/IMPRESSION", "impression"),
        ("CONCLUSION", "impression"),
        ("IMPRESSION", "impression"),
        ("FINDING", "findings"),
        ("CLINICAL HISTORY", "history"),
        ("REASON FOR EXAMINATION", "indication"),
        ("COMPARISONS", "comparison"),
        ("PA AND LATERAL VIEWS", "pa and lateral views"),
    ],
)
def test_header_variants(header, canonical):
    assert normalise_section_name(header) == canonical


def test_variant_header_in_a_report_becomes_impression():
    r = parse_report(" INDICATION:  cough.\n \n FINDINGS AND IMPRESSION:  Lungs are clear.\n")
    assert r.findings is None
    assert r.impression == "Lungs are clear."
    assert training_text(r, TextConfig()) == "Lungs are clear."
    r = parse_report(" CONCLUSION:  No acute process.\n")
    assert r.impression == "No acute process."


def test_addendum_at_top_is_separated():
    text = (
        " ADDENDUM:  Findings discussed with Dr. ___ at 3pm.\n"
        " ______________________________________________________________________________\n"
        "                                 FINAL REPORT\n"
        " FINDINGS:  No focal consolidation.\n"
        " IMPRESSION:  Normal chest.\n"
    )
    r = parse_report(text)
    assert r.addendum == "ADDENDUM: Findings discussed with Dr. ___ at 3pm."
    assert "addendum" not in r.sections
    assert r.findings == "No focal consolidation."
    assert r.impression == "Normal chest."


def test_repeated_header_is_concatenated():
    r = parse_report(" IMPRESSION:  One.\n IMPRESSION:  Two.\n")
    assert r.impression == "One. Two."


def test_last_paragraph_fallback():
    text = " EXAMINATION:  Chest.\n \n INDICATION:  dyspnea.\n \n Lungs are clear.  No effusion\n or pneumothorax.\n"
    r = parse_report(text)
    assert r.findings is None and r.impression is None
    assert r.last_paragraph == "Lungs are clear. No effusion or pneumothorax."
    assert training_text(r, TextConfig()) == "Lungs are clear. No effusion or pneumothorax."
    assert training_text(r, TextConfig(last_paragraph_fallback=False)) is None


def test_headerless_report_falls_back_to_last_paragraph():
    r = parse_report("Portable view.\n\nNo acute process.\n")
    assert r.last_paragraph == "No acute process."


@pytest.mark.parametrize(
    "header", ["INDICATION", "HISTORY", "CLINICAL HISTORY", "NOTIFICATION", "COMPARISON"]
)
def test_non_target_sections_are_never_used(header):
    r = parse_report(f" EXAMINATION:  Chest.\n \n {header}:  ___ year old with pain, Dr. ___.\n")
    assert r.last_paragraph is None
    assert training_text(r, TextConfig()) is None


def test_last_paragraph_stops_at_next_header():
    r = parse_report(" INDICATION: x.\n \n Clear lungs.\n NOTIFICATION:  Dr. ___ paged.\n")
    assert r.last_paragraph == "Clear lungs."


def test_section_choice_config():
    r = parse_report(" FINDINGS:  Effusion.\n IMPRESSION:  Likely CHF.\n")
    assert training_text(r, TextConfig(sections=["impression", "findings"])) == "Likely CHF."
    assert training_text(r, TextConfig(combine="all")) == "Effusion. Likely CHF."
    only_findings = parse_report(" FINDINGS:  Effusion.\n")
    assert (
        training_text(only_findings, TextConfig(sections=["impression"], last_paragraph_fallback=False))
        is None
    )
    assert training_text(only_findings, TextConfig(sections=["impression"])) == "Effusion."


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"sections": ["indication"]}, "report.sections contains 'indication'"),
        ({"sections": ["history", "findings"]}, "report.sections contains 'history'"),
        ({"sections": []}, "report.sections=[]"),
        ({"sections": ["findings", "findings"]}, "without repeats"),
        ({"combine": "best"}, "report.combine='best'"),
    ],
)
def test_bad_text_config_names_the_setting(kwargs, needle):
    with pytest.raises(ConfigError) as err:
        TextConfig(**kwargs)
    assert needle in str(err.value)


def test_crlf_and_lowercase_text_are_handled():
    r = parse_report(" FINDINGS:  Normal heart.\r\n IMPRESSION:  normal.\r\n")
    assert r.findings == "Normal heart."
    assert r.impression == "normal."
