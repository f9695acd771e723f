"""A captioning run through ``run_training``: cross-entropy first, then self-critical training that starts from
the saved captioner (``model: RUN_DIR``) and logs its reward terms."""
from __future__ import annotations

import json

import pytest

from polymodal import load_model, load_run_config, run_training

DATA = {"train": {"name": "shapes", "split": "train", "size": 64}, "val": {"name": "shapes", "split": "val", "size": 16}}
TRAIN = {"batch_size": 16, "lr": 2e-3, "precision": "fp32", "log_every": 2, "checkpoint_every": 0, "warmup_steps": 2}


def _records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_cross_entropy_then_self_critical_from_the_saved_model(tmp_path) -> None:
    xe = run_training(load_run_config({"model": "caption-tiny", "data": DATA, "out": str(tmp_path / "xe"),
                                       "train": {**TRAIN, "epochs": 1, "label_smoothing": 0.1}}), progress=False)
    records = _records(tmp_path / "xe")
    assert {"loss", "token_accuracy"} <= set(records[0])
    assert {"val/BLEU-1", "val/BLEU-4", "val/ROUGE-L", "val/CIDEr-D"} <= set(records[-1])
    tokenizer = xe.tokenizer
    saved = load_model(xe.checkpoint).config
    assert (saved["bos_id"], saved["eos_id"], saved["pad_id"]) == (tokenizer.bos_id, tokenizer.eos_id,
                                                                   tokenizer.pad_id)

    scst = run_training(load_run_config({"model": str(tmp_path / "xe"), "data": DATA, "out": str(tmp_path / "scst"),
                                         "train": {**TRAIN, "epochs": 1, "lr": 1e-4, "scst": True,
                                                   "scst_samples": 2}}), progress=False)
    terms = _records(tmp_path / "scst")[0]
    assert {"loss", "reward", "baseline", "entropy"} <= set(terms)
    assert terms["reward"] >= 0 and terms["entropy"] > 0
    # It started from the cross-entropy weights and kept their tokenizer.
    assert scst.tokenizer.tokenizer.to_str() == tokenizer.tokenizer.to_str()


def test_a_decoder_smaller_than_the_tokenizer_is_refused(tmp_path) -> None:
    config = load_run_config({"model": "caption-tiny", "data": DATA, "out": str(tmp_path / "run"),
                              "train": {**TRAIN, "epochs": 1}}, ["model.text.vocab_size=100"])
    with pytest.raises(ValueError, match="set model.text.vocab_size >= "):
        run_training(config, progress=False)
