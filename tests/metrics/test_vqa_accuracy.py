"""VQA accuracy against hand-worked values from the official evaluator's rules (GT-Vision-Lab/VQA vqaEval.py).

Leave-one-out rule used for the expected values: with n answers of which m equal the prediction,
acc = (m * min(1, (m - 1) / 3) + (n - m) * min(1, m / 3)) / n.
"""
from __future__ import annotations

import dataclasses

import pytest

from polymodal.metrics import VQAReport, normalize_answer, vqa_accuracy, vqa_report


def _answers(matching: str, m: int, other: str = "no", n: int = 10) -> list[str]:
    return [matching] * m + [other] * (n - m)


# ---------------------------------------------------------------------------------------------- leave-one-out
@pytest.mark.parametrize(
    ("m", "expected"),
    [
        (0, 0.0),  # every held-out set has 0 matches
        (1, 0.3),  # (1 * min(1, 0/3) + 9 * min(1, 1/3)) / 10 = (0 + 3) / 10
        (2, 0.6),  # (2 * min(1, 1/3) + 8 * min(1, 2/3)) / 10 = (2/3 + 16/3) / 10 = 6 / 10
        (3, 0.9),  # (3 * min(1, 2/3) + 7 * min(1, 3/3)) / 10 = (2 + 7) / 10
        (4, 1.0),  # (4 * min(1, 3/3) + 6 * min(1, 4/3)) / 10 = (4 + 6) / 10
        (8, 1.0),  # (8 * min(1, 7/3) + 2 * min(1, 8/3)) / 10
    ],
)
def test_partial_agreement_among_ten_answers(m: int, expected: float) -> None:
    assert vqa_accuracy("yes", _answers("yes", m)) == pytest.approx(expected, abs=1e-12)


def test_minority_answer_from_the_evaluators_issue_1() -> None:
    # 8 "yes", 2 "no"; "no": (8 * min(1, 2/3) + 2 * min(1, 1/3)) / 10 = (16/3 + 2/3) / 10 = 0.6.
    assert vqa_accuracy("no", _answers("yes", 8)) == pytest.approx(0.6, abs=1e-12)


def test_other_answer_counts() -> None:
    # n = 3, m = 2: (2 * min(1, 1/3) + 1 * min(1, 2/3)) / 3 = (2/3 + 2/3) / 3 = 4/9.
    assert vqa_accuracy("cat", ["cat", "cat", "dog"]) == pytest.approx(4 / 9, abs=1e-12)
    # n = 5, m = 5 (unanimous): (5 * min(1, 4/3)) / 5 = 1.
    assert vqa_accuracy("cat", ["cat"] * 5) == 1.0
    # n = 2, m = 2: (2 * min(1, 1/3)) / 2 = 1/3.
    assert vqa_accuracy("cat", ["cat", "cat"]) == pytest.approx(1 / 3, abs=1e-12)
    # n = 1: holding out the only answer leaves nothing to match, even for the same string.
    assert vqa_accuracy("cat", ["cat"]) == 0.0


def test_returns_a_plain_float() -> None:
    assert type(vqa_accuracy("yes", ["yes"] * 10)) is float
    assert type(vqa_accuracy("no", ["yes"] * 10)) is float


# ------------------------------------------------------------------------------------------- unanimous answers
def test_unanimous_answers_are_compared_without_normalisation() -> None:
    # All ten answers are the same string, so neither side is normalised: only an exact match counts.
    assert vqa_accuracy("yes.", ["yes."] * 10) == 1.0
    assert vqa_accuracy("Yes.", ["yes."] * 10) == 0.0  # case differs
    assert vqa_accuracy("yes", ["yes."] * 10) == 0.0  # the period is not stripped
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy("2", ["two"] * 10) == 0.0  # number words are not mapped
    assert vqa_accuracy("dog", ["a dog"] * 10) == 0.0  # articles are not dropped


def test_one_dissenting_answer_switches_normalisation_on() -> None:
    # Nine "yes." and one "no": normalised, the nine become "yes", and so does "Yes" -> m = 9 -> 1.0.
    assert vqa_accuracy("Yes", ["yes."] * 9 + ["no"]) == 1.0
    # "yes" and "yes." are distinct strings, so this set is normalised too: all ten become "yes".
    assert vqa_accuracy("YES!", ["yes"] * 5 + ["yes."] * 5) == 1.0


# ------------------------------------------------------------------------------------------------ whitespace
def test_newlines_tabs_and_ends_are_cleaned_before_anything_else() -> None:
    assert vqa_accuracy("  yes\n", ["yes"] * 10) == 1.0
    assert vqa_accuracy("\tyes\t", ["yes"] * 10) == 1.0
    # Cleaned first, these ten answers are all "yes": unanimous, so "Yes" is not lower-cased and scores 0.
    mixed_whitespace = ["yes\t"] * 5 + [" yes\n"] * 5
    assert vqa_accuracy("yes", mixed_whitespace) == 1.0
    assert vqa_accuracy("Yes", mixed_whitespace) == 0.0
    # An inner newline or tab becomes a space: "hot\ndog" -> "hot dog".
    assert vqa_accuracy("hot\ndog", ["hot dog"] * 10) == 1.0
    assert normalize_answer("hot\tdog\n") == "hot dog"


# ------------------------------------------------------------------------------------------------ punctuation
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yes.", "yes"),  # trailing period deleted
        ("yes!", "yes"),  # "!" touches no space -> becomes a space, which the word split drops
        ("yes?", "yes"),
        ("2.5", "2.5"),  # a period before a digit is kept
        (".5", ".5"),  # ... even with no digit before it: the official "look-behind" is a no-op look-ahead
        ("2.", "2"),  # a period after a digit but before none is deleted
        ("3.14.", "3.14"),
        ("u.s.a.", "usa"),  # periods are deleted, not replaced by a space
        ("1,000", "1000"),  # digit-comma-digit: commas deleted
        ("1,000 (approx)", "1000 approx"),  # ... and then every mark in the string is deleted
        ("(approx)", "approx"),  # no space next to the parentheses: each becomes a space
        ("1, 2", "1 2"),  # ", " touches a space: the comma is deleted
        ("red,white", "red white"),  # no space next to it: the comma becomes a space
        ("red, white,blue", "red whiteblue"),  # one comma touches a space, so every comma is deleted
        ("hot-dog", "hot dog"),
        ("hot-dog - mustard", "hotdog mustard"),  # one "-" touches a space, so both are deleted
        ("black/white", "black white"),
        ('"stop"', "stop"),
        ("left;right", "left right"),
        ("a+b=c", "b c"),  # "+" and "=" become spaces; then the article "a" is dropped
        ("10:30", "10:30"),  # ":" is not in the punctuation list
        ("don't", "don't"),  # nor is the apostrophe
        ("50%", "50%"),  # nor "%"
        ("  big   red  ", "big red"),  # runs of spaces collapse
    ],
)
def test_punctuation_rules(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_only_the_first_32_lone_periods_are_deleted() -> None:
    # vqaEval passes re.UNICODE (== 32) positionally into Pattern.sub, where it is the replacement count.
    assert normalize_answer("x." * 40) == "x" * 32 + "x." * 8


def test_digits_in_the_period_rule_are_ascii() -> None:
    # The evaluator is Python 2 code without re.UNICODE: "\d" does not match the Arabic-Indic digit three.
    assert normalize_answer("x.\u0663") == "x\u0663"


# --------------------------------------------------------------------------------- numbers, articles, case
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("two", "2"),
        ("Two Dogs", "2 dogs"),
        ("zero", "0"),
        ("none", "0"),  # the manual map sends "none" to "0" too
        ("ten", "10"),
        ("eleven", "eleven"),  # only zero..ten are mapped
        ("twenty two", "twenty 2"),  # word by word
        ("a dog", "dog"),
        ("The Cat", "cat"),
        ("an apple", "apple"),
        ("the one", "1"),
        ("a", ""),  # an answer that is only an article vanishes
        ("YES", "yes"),
    ],
)
def test_number_words_articles_and_case(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


# ------------------------------------------------------------------------------------------------ contractions
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dont", "don't"),
        ("isnt", "isn't"),
        ("cant", "can't"),
        ("whats up", "what's up"),
        ("oclock", "o'clock"),
        ("yall", "y'all"),
        ("youre right", "you're right"),
        ("couldnt've", "couldn't've"),
        ("twas", "'twas"),
        ("somebody'd", "somebodyd"),  # the official table maps this one backwards
        ("Im", "im"),  # its "Im" / "Ive" keys are capitalised but looked up after lower-casing
        ("Ive", "ive"),
        ("dont dont", "don't don't"),
    ],
)
def test_contractions(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


# ------------------------------------------------------------------------------ normalisation in accuracy
def test_normalised_matches_count_in_accuracy() -> None:
    # Normalised: ["2", "2", "2", "2", "3", "3", "3", "4", "4", "5"].
    answers = ["two", "2", "2 ", "Two.", "3", "three", "3", "4", "four", "five"]
    assert vqa_accuracy("2", answers) == 1.0  # m = 4
    assert vqa_accuracy("three", answers) == pytest.approx(0.9, abs=1e-12)  # m = 3
    assert vqa_accuracy("FOUR!", answers) == pytest.approx(0.6, abs=1e-12)  # m = 2
    assert vqa_accuracy("5", answers) == pytest.approx(0.3, abs=1e-12)  # m = 1
    assert vqa_accuracy("6", answers) == 0.0
    # Contraction: "dont" -> "don't" meets three "don't" -> m = 3.
    assert vqa_accuracy("dont", ["don't"] * 3 + ["no"] * 7) == pytest.approx(0.9, abs=1e-12)
    # Articles: "the dog", "a dog" and "dog" all become "dog" -> m = 3.
    assert vqa_accuracy("the dog", ["a dog", "a dog", "dog"] + ["cat"] * 7) == pytest.approx(0.9, abs=1e-12)
    # Manual map: a human "none" and a predicted "none" or "0" all become "0" -> m = 1.
    assert vqa_accuracy("none", ["none"] + ["1"] * 9) == pytest.approx(0.3, abs=1e-12)
    assert vqa_accuracy("0", ["none"] + ["1"] * 9) == pytest.approx(0.3, abs=1e-12)


# ---------------------------------------------------------------------------------------------------- errors
def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="empty"):
        vqa_accuracy("yes", [])
    with pytest.raises(ValueError, match="prediction must be a str"):
        vqa_accuracy(None, ["yes"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"answers\[1\] must be a str, got int"):
        vqa_accuracy("yes", ["yes", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="not a single str"):
        vqa_accuracy("yes", "yes")
    with pytest.raises(ValueError, match="text must be a str"):
        normalize_answer(b"yes")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- report
def test_report_overall_and_per_type_means() -> None:
    predictions = ["red", "yes", "blue"]
    answers = [
        ["red"] * 10,  # 1.0
        _answers("yes", 1),  # 0.3
        _answers("blue", 2, other="green"),  # 0.6
    ]
    report = vqa_report(
        predictions,
        answers,
        question_types=["what color", "is the", "what color"],
        answer_types=["other", "yes/no", "other"],
    )
    assert report.count == 3
    assert report.overall == pytest.approx(100 * (1.0 + 0.3 + 0.6) / 3)  # 63.33...
    assert report.per_question_type == pytest.approx({"what color": 100 * (1.0 + 0.6) / 2, "is the": 30.0})
    assert report.per_answer_type == pytest.approx({"other": 80.0, "yes/no": 30.0})
    assert list(report.per_question_type) == ["what color", "is the"]  # order of first appearance


def test_report_without_types_and_not_rounded() -> None:
    report = vqa_report(["yes", "no", "no"], [["yes"] * 10, ["yes"] * 10, _answers("no", 1, other="yes")])
    # (1.0 + 0.0 + 0.3) / 3 = 0.4333..., reported as 43.333..., not the evaluator's displayed 43.33.
    assert report.overall == pytest.approx(130 / 3)
    assert report.overall != 43.33
    assert report.per_question_type == {} and report.per_answer_type == {}
    assert isinstance(report, VQAReport)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.count = 4  # type: ignore[misc]


def test_report_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="predictions=2, answers=1"):
        vqa_report(["yes", "no"], [["yes"] * 10])
    with pytest.raises(ValueError, match="question_types=1"):
        vqa_report(["yes", "no"], [["yes"] * 10] * 2, question_types=["is the"])
    with pytest.raises(ValueError, match="answer_types=3"):
        vqa_report(["yes", "no"], [["yes"] * 10] * 2, answer_types=["a", "b", "c"])
    with pytest.raises(ValueError, match="at least one question"):
        vqa_report([], [])
    with pytest.raises(ValueError, match="empty"):
        vqa_report(["yes"], [[]])
