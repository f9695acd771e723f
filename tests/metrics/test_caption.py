"""Captioning metrics against pycocoevalcap 1.2's own pure-Python scorers (Bleu, Rouge, Cider) on pre-tokenised
captions, against hand-worked values, and ptb_tokenize against the Stanford PTBTokenizer jar when Java is present.
"""
from __future__ import annotations

import random
import shutil
from collections import defaultdict
from collections.abc import Callable

import pytest

from polymodal.metrics import (
    CiderDocumentFrequency,
    bleu,
    caption_scores,
    cider_d,
    cider_document_frequency,
    ptb_tokenize,
    rouge_l,
)

pytest.importorskip("pycocoevalcap")
from pycocoevalcap.bleu.bleu import Bleu  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402
from pycocoevalcap.cider.cider_scorer import CiderScorer  # noqa: E402
from pycocoevalcap.rouge.rouge import Rouge  # noqa: E402

Corpus = tuple[dict[str, str], dict[str, list[str]]]

HAND_CORPUS: Corpus = (
    {
        "long": "a man riding a wave on top of a surfboard in the big blue ocean on a sunny day",
        "short": "a dog",
        "repeats": "the the the cat cat on the mat the",
        "exact": "two giraffes standing in a field",
        "unrelated": "pizza with pepperoni",
        "one-ref": "a red bus driving down a street",
        "tie": "a cat sitting on a laptop",
    },
    {
        "long": ["a man riding a wave on a surfboard", "a surfer rides a big wave", "a person surfing in the ocean"],
        "short": ["a brown dog running on the grass", "a dog plays in a park", "the dog is running"],
        "repeats": ["the cat is on the mat", "a cat sits on the mat", "the cat on the mat"],
        "exact": ["two giraffes standing in a field", "a pair of giraffes in the grass"],
        "unrelated": ["a train on the tracks", "an old train at a station"],
        "one-ref": ["a double decker bus on a city street"],
        "tie": ["a cat on a laptop", "a grey cat sitting on a computer keyboard", "cat sitting on a laptop now"],
    },
)


def _random_corpus(seed: int, images: int = 200) -> Corpus:
    rng = random.Random(seed)
    vocab = "a the dog cat man on in with sitting red of and".split()

    def sentence() -> str:
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 14)))

    refs = {f"img{i}": [sentence() for _ in range(rng.randint(1, 5))] for i in range(images)}
    return {key: sentence() for key in refs}, refs


# An untrained captioner's captions: not one n-gram in common with the references.
NO_OVERLAP = ({"a": "zebra zebra", "b": "x"}, {"a": ["a red circle", "the red circle"], "b": ["a blue square"]})
CORPORA = [pytest.param(HAND_CORPUS, id="hand"), pytest.param(_random_corpus(0), id="random-200"),
           pytest.param(NO_OVERLAP, id="no-overlap")]


def _res(cands: dict[str, str]) -> dict[str, list[str]]:
    return {key: [caption] for key, caption in cands.items()}


# ---------------------------------------------------------------------------------------- against pycocoevalcap
@pytest.mark.parametrize("corpus", CORPORA)
def test_bleu_matches_pycocoevalcap(corpus: Corpus) -> None:
    cands, refs = corpus
    expected, _ = Bleu(4).compute_score(refs, _res(cands), verbose=0)
    assert bleu(cands, refs) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert bleu(cands, refs, n=2) == pytest.approx(expected[:2], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("corpus", CORPORA)
def test_rouge_l_matches_pycocoevalcap(corpus: Corpus) -> None:
    cands, refs = corpus
    expected, _ = Rouge().compute_score(refs, _res(cands))
    assert rouge_l(cands, refs) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("corpus", CORPORA)
def test_cider_d_matches_pycocoevalcap(corpus: Corpus) -> None:
    cands, refs = corpus
    expected, expected_per_image = Cider().compute_score(refs, _res(cands))
    score, per_image = cider_d(cands, refs)
    assert score == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert per_image == pytest.approx(list(expected_per_image), rel=1e-9, abs=1e-12)


def test_cider_d_with_training_document_frequency_matches_pycocoevalcap() -> None:
    cands, refs = _random_corpus(1, images=50)
    _, train_refs = _random_corpus(2, images=50)  # same image count: pycocoevalcap takes log N from the scored set
    train_df = CiderScorer(n=4)
    for caption_set in train_refs.values():
        train_df.cook_append(None, caption_set)
    train_df.compute_doc_freq()
    scorer = CiderScorer(n=4, sigma=6.0)
    for key, caption_set in refs.items():
        scorer += (cands[key], caption_set)
    scorer.document_frequency = defaultdict(float, train_df.document_frequency)
    expected = scorer.compute_cider()

    document_frequency = cider_document_frequency(train_refs)
    assert dict(document_frequency.counts) == train_df.document_frequency
    score, per_image = cider_d(cands, refs, document_frequency=document_frequency)
    assert per_image == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert score == pytest.approx(sum(expected) / len(expected), rel=1e-9)
    assert score != pytest.approx(cider_d(cands, refs)[0], rel=1e-3)


def test_cider_d_log_n_comes_from_the_training_set() -> None:
    # Training set of N = 4 images: df(a) = 4, df(b) = 1, df(c) = 2, df(a b) = 1, df(a c) = 2.
    train = {1: ["a b"], 2: ["a c"], 3: ["a c d"], 4: ["a"]}
    # idf = log N - log df: a -> 0, b -> log 4, c -> log 2, "a b" -> log 4, "a c" -> log 2.
    # Candidate "a b" vs reference "a b": both vectors equal for n = 1, 2, so each cosine is 1; n = 3, 4 have no
    # n-grams and score 0; lengths match, so no penalty: (1 + 1 + 0 + 0) / 4 = 0.5.
    # Against "a c": the only shared n-gram is "a", weight 0, so 0 for every n.
    # CIDEr-D = 10 * (0.5 + 0) / 2 references = 2.5. (With log N from the 1 scored image every idf would be 0.)
    df = cider_document_frequency(train)
    assert df.num_images == 4
    assert df.counts[("a",)] == 4 and df.counts[("a", "c")] == 2 and ("b", "c") not in df.counts
    score, per_image = cider_d({"x": "a b"}, {"x": ["a b", "a c"]}, document_frequency=df)
    assert score == pytest.approx(2.5, rel=1e-12)
    assert per_image == pytest.approx([2.5], rel=1e-12)


def test_tokenize_option_tokenizes_candidates_and_references() -> None:
    cands = {1: "A dog's toy, on the GRASS.", 2: "Two cats (sleeping)!"}
    refs = {1: ["The dog's toy is on the grass.", "A toy."], 2: ["Two cats sleeping on a bed..."]}
    tokenized = ({k: ptb_tokenize(v) for k, v in cands.items()},
                 {k: [ptb_tokenize(r) for r in v] for k, v in refs.items()})
    assert bleu(cands, refs, tokenize=True) == bleu(*tokenized)
    assert rouge_l(cands, refs, tokenize=True) == rouge_l(*tokenized)
    assert cider_d(cands, refs, tokenize=True) == cider_d(*tokenized)


# ------------------------------------------------------------------------------------------------- hand-worked
@pytest.mark.parametrize(
    ("cands", "refs", "expected"),
    [
        # Clipped unigram matches 1 (a) + 1 (dog) = 2 of 2 guessed: P1 = 1. Lengths 2 vs 4: ratio 0.5 < 1, so
        # BP = exp(1 - 1 / 0.5) = exp(-1).
        ({1: "a dog"}, {1: ["a big dog runs"]}, 0.36787944117144233),
        # Image 1: "the" x2 and "cat" x2 clip to their largest count in any one reference (1 each): 2 of 4.
        # Image 2: "a" and "dog" both match: 2 of 2. P1 = 4 / 6. Reference lengths: image 1 takes 4 (candidate
        # length 4); image 2's candidate length 2 is 1 away from both 1 and 3 and the tie goes to the shorter, 1.
        # ratio = 6 / (4 + 1) = 1.2 >= 1, so no brevity penalty: BLEU-1 = 2 / 3. (Taking 3 instead would give
        # ratio 6 / 7 < 1 and a penalty.)
        ({1: "the cat the cat", 2: "a dog"}, {1: ["the cat is here", "a cat"], 2: ["dog", "a big dog"]}, 2 / 3),
    ],
)
def test_bleu_1_by_hand(cands: dict[int, str], refs: dict[int, list[str]], expected: float) -> None:
    # The 1e-15 / 1e-9 smoothing constants move the result by ~1e-10 relative.
    assert bleu(cands, refs, n=1) == pytest.approx([expected], rel=1e-9)


def test_rouge_l_by_hand() -> None:
    # Image 1, candidate "a cat sat on the mat" (6 tokens):
    #   vs "the cat sat on a mat": LCS "cat sat on mat" = 4, P = 4/6, R = 4/6;
    #   vs "a cat on the mat": LCS = 5 (all of it), P = 5/6, R = 5/5.
    #   P = 5/6, R = 1: F = 2.44 * 5/6 / (1 + 1.44 * 5/6) = (61/30) / (11/5) = 61/66.
    # Image 2, candidate "a b c": vs "a b c d e f" P = 3/3, R = 3/6; vs "c" P = 1/3, R = 1/1.
    #   The maxima come from different references: P = 1, R = 1, F = 2.44 / 2.44 = 1.
    # Mean = (61/66 + 1) / 2 = 127/132.
    cands = {1: "a cat sat on the mat", 2: "a b c"}
    refs = {1: ["the cat sat on a mat", "a cat on the mat"], 2: ["a b c d e f", "c"]}
    assert rouge_l(cands, refs) == pytest.approx(127 / 132, rel=1e-12)
    assert rouge_l({1: "x y"}, {1: ["a b"]}) == 0.0


# ------------------------------------------------------------------------------------------------ ptb_tokenize
PTB_CASES = [
    ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
    ("Don't touch the dog's bone!", "do n't touch the dog 's bone"),
    ("The dogs' owner can't see", "the dogs owner ca n't see"),
    ("They're sure we've seen it, I'm told he'll say she'd go.", "they 're sure we 've seen it i 'm told he 'll say "
                                                                 "she 'd go"),
    ("Two   DOGS   play", "two dogs play"),
    ("A well-known dog - running -- fast.", "a well-known dog running fast"),
    ("It costs $5, or 50% off at 1,000 places; ok: fine.", "it costs $ 5 or 50 % off at 1,000 places ok fine"),
    ('The "big" dog\'s toy', "the big dog 's toy"),
    ("A man (left) and a woman [right].", "a man -lrb- left -rrb- and a woman -lsb- right -rsb-"),
    ("Wow!! What?!", "wow !! what ?!"),
    ("Mr. Smith lives in the U.S.", "mr. smith lives in the u.s."),
    ("I cannot go", "i can not go"),
    ("A 3.5cm bug at 10:30am", "a 3.5 cm bug at 10:30 am"),
    ("...", ""),
    ("", ""),
]
REALISTIC = [
    "A bathroom with a toilet, sink, and shower.",
    "a  kitchen with  white cabinets and a stainless steel refrigerator ",
    'A "No Parking" sign next to a fire hydrant.',
    "An old-fashioned clock tower in the middle of a city.",
    "a person's hand holding a hot dog with mustard;ketchup",
    "People celebrating St. Patrick's Day in the U.S.",
    "A 2-year-old boy eating a slice of cake.",
    "There are 3 giraffes standing in a field...",
    "Is this a cat or a dog? I don't know.",
    "A man wearing a t-shirt that says 'I love NY'.",
    "Someone's cellphone sitting on top of a 12\" pizza box.",
    "A close-up of a bowl of fruit: apples, oranges and bananas.",
    "A skateboarder doing a trick on a half-pipe at 3:30 p.m.",
    "The 1,000 year old tree stands 30.5 meters tall",
    "A MAN ON A MOTORCYCLE ON A DIRT ROAD",
    "A woman holding an umbrella...in the rain.",
    "A hot-dog stand on the corner of 5th Ave. and Main St.",
    "It's a sunny day at the beach w/ kites",
    "a street sign for Broadway / 42nd St",
    "A cat and a dog (who are best friends) sleeping together.",
]


@pytest.mark.parametrize(("text", "expected"), PTB_CASES)
def test_ptb_tokenize(text: str, expected: str) -> None:
    assert ptb_tokenize(text) == expected


@pytest.mark.skipif(shutil.which("java") is None, reason="the Stanford PTBTokenizer reference needs Java")
def test_ptb_tokenize_matches_the_stanford_jar() -> None:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    texts = [text for text, _ in PTB_CASES if text] + REALISTIC
    expected = PTBTokenizer().tokenize({i: [{"caption": text}] for i, text in enumerate(texts)})
    assert [ptb_tokenize(text) for text in texts] == [expected[i][0] for i in range(len(texts))]


# --------------------------------------------------------------------------------------------------- bad inputs
GOOD_CANDS, GOOD_REFS = {1: "a dog", 2: "a cat"}, {1: ["a dog"], 2: ["a cat"]}


@pytest.mark.parametrize(
    ("cands", "refs", "message"),
    [
        ({1: "a dog"}, GOOD_REFS, "ids differ"),
        ({**GOOD_CANDS, 3: "x"}, GOOD_REFS, "ids differ"),
        ({}, {}, "no images"),
        (GOOD_CANDS, {1: ["a dog"], 2: []}, "no references"),
        ({1: "a dog", 2: ["a cat"]}, GOOD_REFS, "must be a str"),
        (GOOD_CANDS, {1: ["a dog"], 2: "a cat"}, "sequence of str"),
        (GOOD_CANDS, {1: ["a dog"], 2: ["a cat", None]}, "must all be str"),
        ([("1", "a dog")], GOOD_REFS, "mappings"),
    ],
)
@pytest.mark.parametrize("metric", [bleu, rouge_l, cider_d])
def test_bad_inputs_raise(metric: Callable[..., object], cands: object, refs: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        metric(cands, refs)


def test_bad_parameters_raise() -> None:
    with pytest.raises(ValueError, match="n must be"):
        bleu(GOOD_CANDS, GOOD_REFS, n=0)
    with pytest.raises(ValueError, match="n must be"):
        cider_d(GOOD_CANDS, GOOD_REFS, n=0)
    with pytest.raises(ValueError, match="sigma"):
        cider_d(GOOD_CANDS, GOOD_REFS, sigma=0.0)
    with pytest.raises(ValueError, match="no references"):
        cider_document_frequency({1: []})
    with pytest.raises(ValueError, match="exceeds num_images"):
        CiderDocumentFrequency({("a",): 3}, num_images=2)
    with pytest.raises(ValueError, match="num_images"):
        CiderDocumentFrequency({}, num_images=0)


def test_caption_scores_tokenizes_raw_captions_then_scores_as_pycocoevalcap() -> None:
    cands = {1: "A dog's toy, on the GRASS.", 2: "Two cats (sleeping)!", 3: "A red bus."}
    refs = {1: ["The dog's toy is on the grass.", "A toy."], 2: ["Two cats sleeping on a bed...", "Cats, asleep."],
            3: ["A red double-decker bus.", "a bus on the street"]}
    tokenized_refs = {k: [ptb_tokenize(r) for r in v] for k, v in refs.items()}
    tokenized_res = {k: [ptb_tokenize(c)] for k, c in cands.items()}
    bleu_expected, _ = Bleu(4).compute_score(tokenized_refs, tokenized_res, verbose=0)
    scores = caption_scores(cands, refs)
    assert list(scores) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D"]
    assert [scores[f"BLEU-{k}"] for k in range(1, 5)] == pytest.approx(bleu_expected, rel=1e-9, abs=1e-12)
    assert scores["ROUGE-L"] == pytest.approx(Rouge().compute_score(tokenized_refs, tokenized_res)[0], rel=1e-9)
    assert scores["CIDEr-D"] == pytest.approx(Cider().compute_score(tokenized_refs, tokenized_res)[0], rel=1e-9)
    with pytest.raises(ValueError, match="no candidate"):
        caption_scores({1: "a dog"}, refs)
