"""VQA accuracy as the official evaluator computes it (GT-Vision-Lab/VQA, ``vqaEval.py`` on master, a013f00).

Each of the n human answers is held out in turn; against the other n - 1 the prediction scores
``min(1, matches / 3)``, and the question's accuracy is the mean of those n scores. With the usual ten answers,
a prediction given by 1, 2, 3 or 4+ annotators scores 0.3, 0.6, 0.9 or 1.0.

Answers are compared as strings after newlines and tabs become spaces and the ends are stripped. The full
normalisation (punctuation, number words, articles, contractions; see ``normalize_answer``) runs only when the
human answers disagree: if all of them are the same string, the prediction must match it exactly, case and
punctuation included. The dataset authors kept it that way so answers that read text from the image are not
rewritten (GT-Vision-Lab/VQA issue #14).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["VQAReport", "normalize_answer", "vqa_accuracy", "vqa_report"]

# The official table, less "Im", "Ive", "Id've" and "I'dve": it is consulted after lower-casing, so keys with a
# capital never match. "somebody'd" -> "somebodyd" runs backwards but is kept: it is what the evaluator does.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't",
    "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
# Not in the list, so never touched: ' : . (periods have their own rule) * & # % $ ~ ^ |
_PUNCTUATION = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)
# re.ASCII: the official script is Python 2 and compiles its patterns without re.UNICODE, so \d means 0-9 there.
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d", re.ASCII)
# The official pattern is (?!<=\d)(\.)(?!\d). Its first group reads like a look-behind but is a look-ahead for
# the text "<=" plus a digit, which can never start where a "." does, so only (?!\d) acts: a period is deleted
# unless a digit follows it ("2.5" keeps it, "2." and "a.b" lose it).
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)", re.ASCII)
# The official call passes re.UNICODE (== 32) positionally, where ``Pattern.sub`` takes its count: periods after
# the 32nd deletable one are kept.
_MAX_PERIODS_DELETED = 32


@dataclass(frozen=True)
class VQAReport:
    """Official-style VQA summary; accuracies are percentages (0..100), not rounded.

    Attributes:
        overall: mean per-question accuracy, times 100.
        per_question_type: the same mean over the questions of each question type (empty if none were given).
        per_answer_type: the same mean over the questions of each answer type (empty if none were given).
        count: number of questions.
    """

    overall: float
    per_question_type: dict[str, float]
    per_answer_type: dict[str, float]
    count: int


def _check_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a str, got {type(value).__name__}")
    return value


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _strip_punctuation(text: str) -> str:
    # Each mark is decided once for the whole string, from the input: if any occurrence touches a space, or the
    # text holds a digit-comma-digit group anywhere, every occurrence is deleted; otherwise every occurrence
    # becomes a space. So "hot-dog" -> "hot dog" but "hot-dog - mustard" -> "hotdog  mustard".
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        touches_space = mark + " " in text or " " + mark in text
        out = out.replace(mark, "" if delete_all or touches_space else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_MAX_PERIODS_DELETED)


def _normalize_words(text: str) -> str:
    # Lower-case and split on whitespace; number words become digits before articles are dropped, and the
    # contraction table is looked up once per remaining word (no chaining).
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def normalize_answer(text: str) -> str:
    """The official evaluator's full answer processing, as applied when the human answers disagree.

    In order: newlines and tabs become spaces and the ends are stripped; punctuation marks are deleted or
    replaced by a space (see the module constants for the exact rules, periods included); the text is
    lower-cased and split into words; number words ``zero`` .. ``ten`` and ``none`` become digits; the articles
    ``a``, ``an``, ``the`` are dropped; apostrophe-less contractions are restored (``dont`` -> ``don't``); the
    words are joined with single spaces.

    Example: ``normalize_answer("Two Dogs!")`` is ``"2 dogs"``.
    """
    return _normalize_words(_strip_punctuation(_clean_whitespace(_check_str(text, "text"))))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy of one predicted answer against the human answers, in 0..1 (not rounded).

    With n answers of which m equal the prediction (after the processing described in the module docstring)::

        acc = (1/n) * sum_i min(1, #{j != i : answer_j == prediction} / 3)
            = (m * min(1, (m - 1) / 3) + (n - m) * min(1, m / 3)) / n

    A single answer always gives 0: leaving it out leaves nothing to match.

    Args:
        prediction: the model's answer.
        answers: the human answers, normally ten; repeats count separately.

    Raises:
        ValueError: if ``answers`` is empty or a bare string, or any input is not a str.
    """
    prediction = _clean_whitespace(_check_str(prediction, "prediction"))
    if isinstance(answers, str):
        raise ValueError("answers must be a sequence of str, not a single str")
    references = [_clean_whitespace(_check_str(answer, f"answers[{i}]")) for i, answer in enumerate(answers)]
    if not references:
        raise ValueError("answers must not be empty")
    if len(set(references)) > 1:
        prediction = normalize_answer(prediction)
        references = [normalize_answer(answer) for answer in references]
    matches = [answer == prediction for answer in references]
    total = sum(matches)
    # Summed in the same order and form as the evaluator, so the float agrees to the last bit.
    held_out = [min(1, (total - match) / 3) for match in matches]
    return float(sum(held_out)) / len(held_out)


def _as_list(values: Sequence, what: str) -> list:
    if isinstance(values, str):
        raise ValueError(f"{what} must be a sequence, not a single str")
    return list(values)


def _percent_by_type(scores: list[float], types: list[str] | None) -> dict[str, float]:
    if types is None:
        return {}
    grouped: dict[str, list[float]] = {}
    for score, kind in zip(scores, types, strict=True):
        grouped.setdefault(kind, []).append(score)
    return {kind: 100 * sum(group) / len(group) for kind, group in grouped.items()}


def vqa_report(
    predictions: Sequence[str],
    answers: Sequence[Sequence[str]],
    question_types: Sequence[str] | None = None,
    answer_types: Sequence[str] | None = None,
) -> VQAReport:
    """Official-style VQA accuracy over a set of questions, overall and per question / answer type.

    ``overall = 100 * sum_q acc_q / Q`` with ``acc_q = vqa_accuracy(predictions[q], answers[q])``; each type's
    value is the same mean over the questions of that type. Types appear in order of first occurrence. The
    evaluator rounds these to two decimals for display; here they are returned unrounded.

    Raises:
        ValueError: if there are no questions, the sequences differ in length, or a question is invalid
            (see ``vqa_accuracy``).
    """
    predictions = _as_list(predictions, "predictions")
    answers = _as_list(answers, "answers")
    lengths = {"predictions": len(predictions), "answers": len(answers)}
    if question_types is not None:
        question_types = _as_list(question_types, "question_types")
        lengths["question_types"] = len(question_types)
    if answer_types is not None:
        answer_types = _as_list(answer_types, "answer_types")
        lengths["answer_types"] = len(answer_types)
    if len(set(lengths.values())) > 1:
        raise ValueError("inputs differ in length: " + ", ".join(f"{k}={v}" for k, v in lengths.items()))
    if not predictions:
        raise ValueError("need at least one question")
    scores = [vqa_accuracy(prediction, refs) for prediction, refs in zip(predictions, answers, strict=True)]
    return VQAReport(
        overall=100 * sum(scores) / len(scores),
        per_question_type=_percent_by_type(scores, question_types),
        per_answer_type=_percent_by_type(scores, answer_types),
        count=len(scores),
    )
