"""Clinical correctness: the rule-based CheXpert-14 labeler on handwritten sentences, label F1, agreement."""

import json

import pytest

from medim.data import findings as F
from medim.metrics import cli
from medim.metrics.chexpert_rules import NEGATIVE, POSITIVE, UNCERTAIN, label_report, positive_columns
from medim.metrics.clinical import (
    PATHOLOGY_LABELS,
    finding_accuracy,
    label_scores,
    pair_consistency,
    pathology_labels,
)


def _stated(text: str) -> dict[str, int]:
    return {k: v for k, v in label_report(text).items() if v is not None}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("There is a small right pleural effusion.", {"Pleural Effusion": POSITIVE}),
        ("No pneumothorax.", {"Pneumothorax": NEGATIVE, "No Finding": POSITIVE}),
        ("Possible left pleural effusion.", {"Pleural Effusion": UNCERTAIN}),
        ("A pneumothorax is not seen.", {"Pneumothorax": NEGATIVE, "No Finding": POSITIVE}),
        ("Pneumothorax cannot be excluded.", {"Pneumothorax": UNCERTAIN}),
        ("The heart is moderately enlarged.", {"Cardiomegaly": POSITIVE}),
        ("Heart size is normal.", {"Cardiomegaly": NEGATIVE, "No Finding": POSITIVE}),
        ("No effusion; mild pulmonary edema.", {"Pleural Effusion": NEGATIVE, "Edema": POSITIVE}),
        (
            "No effusion but a right upper lobe nodule.",
            {"Pleural Effusion": NEGATIVE, "Lung Lesion": POSITIVE},
        ),
        ("No change in the large left effusion.", {"Pleural Effusion": POSITIVE}),
        (
            "No focal consolidation to suggest pneumonia.",
            {"Consolidation": NEGATIVE, "Pneumonia": NEGATIVE, "No Finding": POSITIVE},
        ),
        ("A 9 mm nodular opacity in the left lung.", {"Lung Lesion": POSITIVE}),
        (
            "Endotracheal tube in place. No consolidation.",
            {"Support Devices": POSITIVE, "Consolidation": NEGATIVE, "No Finding": POSITIVE},
        ),
        (
            "No pneumothorax and there is a small effusion.",
            {"Pneumothorax": NEGATIVE, "Pleural Effusion": POSITIVE},
        ),
    ],
)
def test_labeler_mentions_negation_uncertainty(text, expected):
    assert _stated(text) == expected


def test_positive_beats_uncertain_beats_negative():
    assert (
        _stated("No effusion on the left. Possible effusion on the right.")["Pleural Effusion"] == UNCERTAIN
    )
    assert _stated("Possible effusion. Definite effusion on the right.")["Pleural Effusion"] == POSITIVE


def test_labeler_reads_findings_and_impression_only():
    report = "INDICATION: Rule out pneumonia.\nFINDINGS: Lungs are clear.\nIMPRESSION: No acute process."
    labels = _stated(report)
    assert "Pneumonia" not in labels and labels["No Finding"] == POSITIVE


def test_positive_columns_with_and_without_uncertain():
    labels = label_report("Small left effusion. Possible pneumonia.")
    assert positive_columns(labels) == {"Pleural Effusion"}
    assert positive_columns(labels, uncertain_as_positive=True) == {"Pleural Effusion", "Pneumonia"}


def test_label_scores_by_hand():
    labels = ("a", "b", "c")
    refs = [{"a", "b"}, {"a"}, set(), {"b"}]
    hyps = [{"a"}, {"a", "b"}, {"b"}, {"b"}]
    scores = label_scores(refs, hyps, labels)
    # a: tp 2 fp 0 fn 0 -> P 1, R 1, F 1 ; b: tp 1 fp 2 fn 1 -> P 1/3, R 1/2, F 0.4 ; c: unused (not in macro)
    assert scores.per_label["a"].f1 == pytest.approx(1.0)
    b = scores.per_label["b"]
    assert (b.precision, b.recall, b.f1, b.support) == pytest.approx((1 / 3, 1 / 2, 0.4, 2))
    assert scores.per_label["c"].f1 == 0.0
    # micro: tp 3 fp 2 fn 1 -> P 3/5, R 3/4, F 2/3
    assert (scores.micro.precision, scores.micro.recall, scores.micro.f1) == pytest.approx((0.6, 0.75, 2 / 3))
    assert (scores.macro.precision, scores.macro.recall, scores.macro.f1) == pytest.approx((2 / 3, 0.75, 0.7))
    assert scores.n == 4


def test_label_scores_reject_mismatches():
    with pytest.raises(ValueError, match="2 reference label sets but 1"):
        label_scores([set(), set()], [set()], ("a",))
    with pytest.raises(ValueError, match="not in the label list"):
        label_scores([{"z"}], [set()], ("a",))


def test_finding_accuracy_and_pair_consistency():
    labels = F.CXR_FINDINGS
    prompts = [{F.CARDIOMEGALY}, {F.NO_FINDING}]
    predicted = [{F.CARDIOMEGALY, F.NODULE}, {F.NO_FINDING}]
    result = finding_accuracy(prompts, predicted, labels)
    assert result.exact_match == 0.5
    assert result.per_label_accuracy[F.NODULE] == 0.5 and result.per_label_accuracy[F.CARDIOMEGALY] == 1.0
    assert result.accuracy == pytest.approx(1 - 1 / (2 * len(labels)))
    reports = ["The heart is enlarged. Small nodule in the left upper lobe.", "No acute findings."]
    consistent = pair_consistency(predicted, [F.extract_cxr_findings(r) for r in reports], labels)
    assert consistent.exact_match == 1.0 and consistent.scores.micro.f1 == 1.0


def test_pathology_labels():
    caption = "Adenocarcinoma with crowded nuclei and high nuclear density; severe nuclear atypia."
    assert pathology_labels(caption) == {"tissue=adenocarcinoma", "density=high", "atypia=severe"}
    assert pathology_labels(caption) <= set(PATHOLOGY_LABELS)


def test_cli_labels_prints_documented_keys(tmp_path, capsys):
    refs, hyps = tmp_path / "refs.jsonl", tmp_path / "hyps.jsonl"
    rows = [
        ("1", "Small left pleural effusion.", "Left pleural effusion."),
        ("2", "No pneumothorax.", "Pneumothorax."),
    ]
    refs.write_text("".join(json.dumps({"id": i, "report": r}) + "\n" for i, r, _ in rows))
    hyps.write_text("".join(json.dumps({"id": i, "report": h}) + "\n" for i, _, h in rows))
    assert cli.main(["labels", "--refs", str(refs), "--hyps", str(hyps)]) == 0
    out = json.loads(capsys.readouterr().out)
    keys = {"labeler", "n", "per_label"} | {
        f"{a}_{b}" for a in ("micro", "macro") for b in ("precision", "recall", "f1")
    }
    assert set(out) == keys and out["n"] == 2
    # refs positive: {Effusion}, {No Finding}; hyps positive: {Effusion}, {Pneumothorax}: tp 1, fp 1, fn 1
    assert out["micro_f1"] == pytest.approx(0.5)
    assert set(out["per_label"]) == set(F.CHEXPERT_COLUMNS)
