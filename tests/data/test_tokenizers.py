import pytest
import torch

from polymodal.data.tokenizers import TextTokenizer

CAPTIONS = [f"a {c} {s} left of a {c2} {s2}" for c in ("red", "blue", "green") for s in ("circle", "square")
            for c2 in ("yellow", "white") for s2 in ("star", "triangle")]


def test_bpe_pads_truncates_and_marks_real_tokens():
    tokenizer = TextTokenizer.train_bpe(CAPTIONS, vocab_size=300, context_length=12)
    batch = tokenizer(["a red circle", "a red circle left of a yellow star and more words beyond the limit"])
    assert batch["input_ids"].shape == (2, 12) and batch["input_ids"].dtype == torch.long
    mask = batch["attention_mask"]
    assert mask[1].all(), "the long caption is truncated to the full context"
    assert 0 < mask[0].sum() < 12 and (batch["input_ids"][0][mask[0] == 0] == tokenizer.pad_id).all()
    assert tokenizer.decode(batch["input_ids"][0].tolist()).strip() == "a red circle"


def test_a_batch_of_short_texts_is_padded_to_its_longest_only():
    tokenizer = TextTokenizer.train_bpe(CAPTIONS, vocab_size=300, context_length=32)
    batch = tokenizer(["a red circle", "a blue square left of a white star"])
    longest = len(tokenizer.tokenizer.encode("a blue square left of a white star").ids)
    assert batch["input_ids"].shape == (2, longest) and longest < 32
    assert batch["attention_mask"][1].all() and batch["attention_mask"][0, -1] == 0
    alone = tokenizer(["a red circle"])
    assert torch.equal(alone["input_ids"][0], batch["input_ids"][0, : alone["input_ids"].shape[1]])


def test_bpe_lowercases_and_round_trips_through_file(tmp_path):
    tokenizer = TextTokenizer.train_bpe(CAPTIONS, vocab_size=300, context_length=16)
    tokenizer.save(tmp_path / "tokenizer.json")
    loaded = TextTokenizer.from_file(tmp_path / "tokenizer.json", context_length=16)
    text = ["A Red SQUARE left of a white star"]
    assert torch.equal(loaded(text)["input_ids"], tokenizer(text)["input_ids"])
    assert torch.equal(tokenizer(text)["input_ids"], tokenizer([text[0].lower()])["input_ids"])
    assert loaded.vocab_size == tokenizer.vocab_size <= 300


def test_missing_file_and_bad_context_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        TextTokenizer.from_file(tmp_path / "nope.json", 8)
    tokenizer = TextTokenizer.train_bpe(CAPTIONS, vocab_size=300, context_length=8)
    with pytest.raises(ValueError, match="context_length"):
        TextTokenizer(tokenizer.tokenizer, 1)
