"""Report metrics: pycocoevalcap (coco) and MeDiM (NLTK) protocols against hand-computed values, and the CLI."""

import json
import math
from pathlib import Path

import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from nltk.translate.meteor_score import single_meteor_score

from medim.metrics import cli
from medim.metrics.reports import JavaNotFoundError, coco_scores, medim_scores, medim_tokens
from medim.metrics.wordnet import WordNetUnavailable, load_wordnet, prepare_wordnet

REFS = ["the cat sat on the mat", "a dog ran home", "no pleural effusion"]
HYPS = ["the cat sat on a mat", "a dog ran", "no effusion"]
COCO_KEYS = {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider"}
MEDIM_KEYS = {
    "medim_bleu1",
    "medim_bleu2",
    "medim_bleu3",
    "medim_bleu4",
    "medim_meteor",
    "medim_rouge_l",
    "unavailable",
}
PATHGEN = (
    Path(__file__).resolve().parents[3] / "shared" / "data" / "pathgen-sample" / "PathGen-1.6M_sample.json"
)


@pytest.fixture(scope="module")
def identical():
    return coco_scores(REFS, REFS)


@pytest.fixture(scope="module")
def different():
    return coco_scores(REFS, HYPS)


def test_coco_identical_texts_score_one(identical):
    for value in (identical.bleu1, identical.bleu2, identical.bleu3, identical.bleu4):
        assert value == pytest.approx(1.0, abs=1e-6)
    assert identical.meteor == pytest.approx(1.0)
    assert identical.rouge_l == pytest.approx(1.0)


def test_coco_bleu_by_hand(different):
    # candidate length 6+3+2 = 11, closest reference length 6+4+3 = 13; clipped matches:
    # unigrams 5+3+2 = 10 of 11, bigrams 3+2+0 = 5 of 5+2+1 = 8
    brevity = math.exp(1 - 13 / 11)
    assert different.bleu1 == pytest.approx(brevity * 10 / 11, abs=1e-6)
    assert different.bleu2 == pytest.approx(brevity * math.sqrt(10 / 11 * 5 / 8), abs=1e-6)


def test_coco_rouge_l_by_hand(different):
    def f(lcs: int, cand: int, ref: int, beta: float = 1.2) -> float:
        p, r = lcs / cand, lcs / ref
        return (1 + beta**2) * p * r / (r + beta**2 * p)

    # LCS: "the cat sat on mat" (5), "a dog ran" (3), "no effusion" (2)
    expected = (f(5, 6, 6) + f(3, 3, 4) + f(2, 2, 3)) / 3
    assert different.rouge_l == pytest.approx(expected, abs=1e-9)


def test_coco_cider_prefers_identical(identical, different):
    assert identical.cider > different.cider > 0
    assert 0 < different.meteor < identical.meteor


def test_missing_java_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(JavaNotFoundError, match="'java' not found on PATH"):
        coco_scores(REFS, HYPS)


def test_medim_tokenisation():
    assert medim_tokens("No effusion. Heart  normal.") == ["no", "effusion", ".", "heart", "normal", "."]


def test_medim_protocol_matches_direct_nltk():
    refs = ["The heart is enlarged. No effusion.", "Small left pleural effusion."]
    hyps = ["The heart size is enlarged.", "There is a small left effusion."]
    scores = medim_scores(refs, hyps)
    pairs = [(medim_tokens(r), medim_tokens(h)) for r, h in zip(refs, hyps, strict=True)]
    smooth = SmoothingFunction().method1
    for n, got in enumerate((scores.bleu1, scores.bleu2, scores.bleu3, scores.bleu4), start=1):
        weights = tuple([1.0 / n] * n)
        expected = (
            sum(sentence_bleu([r], h, weights=weights, smoothing_function=smooth) for r, h in pairs) / 2
        )
        assert got == pytest.approx(expected)
    wordnet = load_wordnet()
    expected_meteor = sum(single_meteor_score(r, h, wordnet=wordnet) for r, h in pairs) / 2
    assert scores.meteor == pytest.approx(expected_meteor)
    assert scores.unavailable == {}


def test_medim_rouge_l_by_hand():
    # the `rouge` package splits sentences at "." (dropping it): "the heart is enlarged" against
    # "the heart is not enlarged": LCS 4, P = 4/4, R = 4/5, F = 2PR / (P + R)
    scores = medim_scores(["The heart is not enlarged."], ["The heart is enlarged."])
    assert scores.rouge_l == pytest.approx(2 * 1 * (4 / 5) / (1 + 4 / 5), abs=1e-6)


def test_medim_identical_and_empty():
    same = medim_scores(REFS, REFS)
    assert (same.bleu1, same.bleu2, same.bleu3, same.rouge_l) == pytest.approx((1.0, 1.0, 1.0, 1.0))
    assert same.bleu4 < 1.0  # "no pleural effusion" has no 4-gram: NLTK's method1 smoothing, per sentence
    assert same.meteor is not None and same.meteor > 0.99
    empty = medim_scores(["no effusion"], [""])
    assert (empty.bleu1, empty.rouge_l, empty.meteor) == (0.0, 0.0, 0.0)


def test_wordnet_from_debian_files():
    wordnet = load_wordnet()
    assert wordnet.get_version() == "3.0"
    assert "effusion" in {lemma.name() for s in wordnet.synsets("effusion") for lemma in s.lemmas()}


def test_missing_wordnet_is_reported(tmp_path):
    with pytest.raises(WordNetUnavailable, match="data.noun"):
        prepare_wordnet(tmp_path / "nowhere", tmp_path / "nltk")


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"id": i, "report": r}) + "\n" for i, r in rows))
    return path


def test_cli_medim_protocol_prints_documented_keys(tmp_path, capsys):
    refs = _write(tmp_path / "refs.jsonl", [("a", REFS[0]), ("b", REFS[1])])
    hyps = _write(tmp_path / "hyps.jsonl", [("b", HYPS[1]), ("a", HYPS[0])])
    assert cli.main(["reports", "--refs", str(refs), "--hyps", str(hyps), "--protocol", "medim"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == MEDIM_KEYS
    direct = medim_scores(REFS[:2], HYPS[:2])
    assert out["medim_bleu1"] == pytest.approx(direct.bleu1)


def test_cli_coco_protocol_prints_documented_keys(tmp_path, capsys, different):
    refs = _write(tmp_path / "refs.jsonl", list(zip("abc", REFS, strict=True)))
    hyps = _write(tmp_path / "hyps.jsonl", list(zip("cba", reversed(HYPS), strict=True)))
    assert cli.main(["reports", "--refs", str(refs), "--hyps", str(hyps)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == COCO_KEYS
    assert out["bleu2"] == pytest.approx(different.bleu2)


def test_cli_mismatched_ids_are_a_clear_error(tmp_path, capsys):
    refs = _write(tmp_path / "refs.jsonl", [("a", REFS[0]), ("b", REFS[1])])
    hyps = _write(tmp_path / "hyps.jsonl", [("a", HYPS[0]), ("c", HYPS[1])])
    assert cli.main(["reports", "--refs", str(refs), "--hyps", str(hyps), "--protocol", "medim"]) == 2
    err = capsys.readouterr().err
    assert "ids differ" in err and "'b'" in err and "'c'" in err


def test_cli_malformed_line_names_file_and_line(tmp_path, capsys):
    refs = _write(tmp_path / "refs.jsonl", [("a", REFS[0])])
    hyps = tmp_path / "hyps.jsonl"
    hyps.write_text('{"id": "a", "report": "x"}\n{not json\n')
    assert cli.main(["reports", "--refs", str(refs), "--hyps", str(hyps), "--protocol", "medim"]) == 2
    assert f"{hyps}:2: invalid JSON" in capsys.readouterr().err


@pytest.mark.skipif(not PATHGEN.is_file(), reason="PathGen sample captions not present")
def test_pathgen_captions_score_sensibly():
    records = json.loads(PATHGEN.read_text())
    captions = [r["caption"] for r in records if isinstance(r, dict) and r.get("caption")][:6]
    assert len(captions) >= 2
    same = medim_scores(captions, captions)
    shifted = medim_scores(captions, captions[1:] + captions[:1])
    assert same.bleu1 == pytest.approx(1.0)
    assert shifted.bleu1 < same.bleu1 and shifted.rouge_l < same.rouge_l
