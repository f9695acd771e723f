"""The captioning task's library side: COCO image ids and results, the CIDEr-D reward of self-critical training,
and scoring a set with an (untrained) captioner."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from polymodal.data.records import ImageTextRecord, ImageTextSet
from polymodal.data.tokenizers import TextTokenizer
from polymodal.data.transforms import image_transform
from polymodal.metrics.caption import cider_d, cider_document_frequency, ptb_tokenize
from polymodal.models.registry import build_model
from polymodal.tasks.captioning import CiderReward, coco_image_id, coco_results, evaluate_captioning

# Three images and their references; the second and third share words the first lacks, so document
# frequencies over all three differ from those of any one batch.
REFERENCES = [
    ["a red circle on the left", "a big red circle", "one red circle and nothing else"],
    ["a blue square above a green triangle", "a green triangle under a blue square"],
    ["a small blue square", "a blue square in the corner", "there is a blue square"],
]
EXTRA_TEXTS = ["a yellow star", "two green circles", "a tiny purple cross in the middle"]


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    texts = [text for refs in REFERENCES for text in refs] + EXTRA_TEXTS
    return TextTokenizer.train_bpe(texts * 3, vocab_size=300, context_length=16)


@pytest.mark.parametrize(("key", "expected"), [
    (391895, 391895),
    ("COCO_val2014_000000391895.jpg", 391895),
    ("/data/export/images/000007.png", 7),  # what read_coco_captions makes of `polymodal data export --format coco`
    ("shapes/val/000012", 12),  # a generated set's record key
    ("abc", "abc"),
])
def test_coco_image_id(key, expected) -> None:
    assert coco_image_id(key) == expected


def test_coco_results_lists_every_caption_and_refuses_duplicate_ids() -> None:
    results = coco_results({"images/000001.png": "a red circle", "images/000002.png": "a blue square"})
    assert results == [{"image_id": 1, "caption": "a red circle"}, {"image_id": 2, "caption": "a blue square"}]
    # Two different files whose names end in the same number would be one image to the COCO tools.
    with pytest.raises(ValueError, match="same COCO image_id"):
        coco_results({"train/000001.png": "a red circle", "val/1.jpg": "a blue square"})


def test_cider_reward_is_cider_d_with_the_document_frequencies_of_all_references(tokenizer) -> None:
    candidates = ["a red circle", "a blue square above a triangle", "a blue square", "a green triangle",
                  "a red circle"]
    image_index = torch.tensor([0, 1, 2, 1, 2])
    # Token ids as the model generates them: no BOS or EOS.
    sequences = [tokenizer.tokenizer.encode(text, add_special_tokens=False).ids for text in candidates]
    assert [tokenizer.decode(ids).strip() for ids in sequences] == candidates

    reward = CiderReward(REFERENCES, tokenizer.decode)(image_index, sequences)

    tokenized = [[ptb_tokenize(text) for text in refs] for refs in REFERENCES]
    frequency = cider_document_frequency(dict(enumerate(tokenized)))
    references = {row: tokenized[image] for row, image in enumerate(image_index.tolist())}
    cands = {row: ptb_tokenize(text) for row, text in enumerate(candidates)}
    _, expected = cider_d(cands, references, document_frequency=frequency)
    assert reward.dtype == torch.float32 and reward.shape == (len(candidates),)
    assert reward.tolist() == pytest.approx(expected, rel=1e-6)
    # The frequencies matter: the batch's own (images repeated, one missing) give other rewards.
    _, batch_only = cider_d(cands, references)
    assert reward.tolist() != pytest.approx(batch_only, rel=1e-3)
    # An exact reference scores higher than a caption of the wrong image.
    assert reward[0] > reward[4]


def test_cider_reward_refuses_an_image_without_references(tokenizer) -> None:
    with pytest.raises(ValueError, match="at least one reference"):
        CiderReward([["a red circle"], []], tokenizer.decode)


COLOURS = [(220, 30, 30), (40, 60, 220), (30, 200, 60)]


def _image_set(captions: list[tuple[str, ...]]) -> ImageTextSet:
    records = [ImageTextRecord(key=f"images/{i + 1:06d}.png", captions=refs) for i, refs in enumerate(captions)]
    colour = {record.key: COLOURS[i % len(COLOURS)] for i, record in enumerate(records)}
    return ImageTextSet("solid", records, load_image=lambda record: Image.new("RGB", (16, 16), colour[record.key]))


def _untrained_captioner(tokenizer: TextTokenizer) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model({
        "family": "captioner",
        "image": {"type": "resnet", "image_size": 16, "layers": [1, 1], "width": 16, "stem": "cifar"},
        "text": {"type": "decoder", "vocab_size": tokenizer.vocab_size, "context_length": 16, "width": 32,
                 "layers": 1, "heads": 2, "mlp_ratio": 2.0, "dropout": 0.0},
        "generate": {"method": "greedy", "max_length": 6},
        "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id,
    }).eval()




def test_evaluate_captioning_scores_one_caption_per_image(tokenizer) -> None:
    model = _untrained_captioner(tokenizer)
    dataset = _image_set([tuple(refs) for refs in REFERENCES] + [("a red circle",)])
    report = evaluate_captioning(model, dataset, tokenizer, image_transform(model.preprocess), batch_size=3)
    assert list(report.scores) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D"]
    assert all(score >= 0 for score in report.scores.values())
    assert list(report.captions) == [record.key for record in dataset.records]
    assert all(isinstance(caption, str) for caption in report.captions.values())
    # Overrides reach the decoder: beam search of width 1 is greedy search.
    beam = evaluate_captioning(model, dataset, tokenizer, image_transform(model.preprocess), batch_size=2,
                               method="beam", beam_size=1)
    assert beam.captions == report.captions


def test_evaluate_captioning_refuses_an_image_without_references(tokenizer) -> None:
    model = _untrained_captioner(tokenizer)
    dataset = _image_set([("a red circle",), (), ("a blue square",)])
    with pytest.raises(ValueError, match="no reference caption.*images/000002.png"):
        evaluate_captioning(model, dataset, tokenizer, image_transform(model.preprocess))
