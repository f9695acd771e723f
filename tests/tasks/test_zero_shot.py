"""Zero-shot classification on hand-made embeddings: the prompt-ensembled classifier and top-1/top-5 accuracy.

The "model" is a lookup: each prompt (seen as its token ids) and each image (seen as its pixel value) maps
to a unit vector chosen here, so the expected classifier and accuracies follow by hand.
"""
import math

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn

from polymodal.data.records import ImageTextRecord, ImageTextSet
from polymodal.data.tokenizers import TextTokenizer
from polymodal.tasks.prompt_templates import resolve_templates
from polymodal.tasks.zero_shot import evaluate_zero_shot, zero_shot_classifier

CLASSES = ["cat", "dog", "bird", "fish", "frog", "horse", "snake"]  # C = 7, so top-5 can miss
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]
DIM = len(CLASSES)


def unit(index: int) -> torch.Tensor:
    return torch.eye(DIM)[index]


def prompt_vectors() -> dict[str, torch.Tensor]:
    """Class c: "a photo of a c." -> e_c; "a drawing of a c." -> 0.6 e_c + 0.8 e_{c+1} (both unit norm).

    Their mean is 0.8 e_c + 0.4 e_{c+1}, so the classifier row of class c is (2 e_c + e_{c+1}) / sqrt(5).
    """
    vectors = {}
    for c, name in enumerate(CLASSES):
        vectors[TEMPLATES[0].format(name)] = unit(c)
        vectors[TEMPLATES[1].format(name)] = 0.6 * unit(c) + 0.8 * unit((c + 1) % DIM)
    return vectors


def word_level_tokenizer() -> TextTokenizer:
    words = ["<pad>", "<unk>", "a", "photo", "drawing", "of", ".", *CLASSES]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return TextTokenizer(tokenizer, context_length=8)


class LookupModel(nn.Module):
    """``encode_text``: the vector of the prompt whose token ids it receives; ``encode_image``: row ``pixel``
    of a fixed table. Counts the prompts it was asked for."""

    def __init__(self, tokenizer: TextTokenizer, texts: dict[str, torch.Tensor], images: torch.Tensor) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # the embedding helpers read the device off a parameter
        self.by_ids = {}
        for text, vector in texts.items():
            tokens = tokenizer([text])
            ids = tuple(tokens["input_ids"][0][tokens["attention_mask"][0].bool()].tolist())
            assert ids not in self.by_ids and 1 not in ids, f"prompt {text!r} must tokenize uniquely, no <unk>"
            self.by_ids[ids] = vector
        self.image_table = images
        self.prompts_seen = 0

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        rows = [tuple(ids[mask.bool()].tolist()) for ids, mask in zip(input_ids, attention_mask)]
        self.prompts_seen += len(rows)
        return torch.stack([self.by_ids[row] for row in rows])

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_table[image[:, 0].long()]


def pixel_set(labels: list[int], class_names: list[str] | None = CLASSES) -> ImageTextSet:
    """Image i is a 2x2 grey image of value i; record i carries ``labels[i]``."""
    records = [ImageTextRecord(key=f"img{i}", captions=("x",), label=label) for i, label in enumerate(labels)]
    return ImageTextSet(
        name="lookup",
        records=records,
        load_image=lambda record: Image.new("L", (2, 2), color=int(record.key[3:])),
        class_names=class_names,
    )


def pixel_value(image: Image.Image) -> torch.Tensor:
    return torch.tensor([float(image.getpixel((0, 0)))])


def test_classifier_is_the_normalised_mean_of_normalised_prompt_embeddings() -> None:
    tokenizer = word_level_tokenizer()
    model = LookupModel(tokenizer, prompt_vectors(), torch.eye(DIM))
    classifier = zero_shot_classifier(model, tokenizer, CLASSES, TEMPLATES)
    expected = (2 * torch.eye(DIM) + torch.eye(DIM).roll(1, dims=1)) / math.sqrt(5)  # row c: (2 e_c + e_{c+1})/√5
    assert expected[0, 0] == pytest.approx(2 / math.sqrt(5)) and expected[0, 1] == pytest.approx(1 / math.sqrt(5))
    torch.testing.assert_close(classifier, expected)
    assert model.prompts_seen == len(CLASSES) * len(TEMPLATES)


def test_classifier_with_one_template_is_the_prompt_embedding() -> None:
    tokenizer = word_level_tokenizer()
    model = LookupModel(tokenizer, prompt_vectors(), torch.eye(DIM))
    classifier = zero_shot_classifier(model, tokenizer, ["dog", "cat"], [TEMPLATES[1]])
    torch.testing.assert_close(classifier, torch.stack([0.6 * unit(1) + 0.8 * unit(2), 0.6 * unit(0) + 0.8 * unit(1)]))


def test_top1_and_top5_accuracy_by_hand() -> None:
    """Logit of class c for image x: (2 x_c + x_{c+1}) / sqrt(5).

    image 0 = e_0, label 0: class 0 scores 2, the top -> top-1 and top-5 hit
    image 1 = e_2, label 1: class 2 scores 2 > class 1's 1 -> rank 2: top-1 miss, top-5 hit
    image 2 = -e_3, label 3: class 3 scores -2, below class 2 (-1) and five classes at 0 -> rank 7: both miss
    image 3 = e_4, label 4: top-1 and top-5 hit
    top-1 = 2/4 = 50 %, top-5 = 3/4 = 75 %.
    """
    tokenizer = word_level_tokenizer()
    images = torch.stack([unit(0), unit(2), -unit(3), unit(4)])
    model = LookupModel(tokenizer, prompt_vectors(), images)
    dataset = pixel_set([0, 1, 3, 4])
    # batch_size 3: the four images come in two batches.
    result = evaluate_zero_shot(model, tokenizer, dataset, pixel_value, TEMPLATES, batch_size=3, progress=False)
    assert result == {"top1": 50.0, "top5": 75.0}


def test_three_images_two_correct() -> None:
    tokenizer = word_level_tokenizer()
    model = LookupModel(tokenizer, prompt_vectors(), torch.stack([unit(5), unit(6), unit(0)]))
    # image 0 -> class 5 (correct), image 1 -> class 6 (correct), image 2 -> class 0 but labelled 6: class 6
    # scores (2*0 + x_0)/sqrt(5) = 1/sqrt(5), second after class 0 -> top-1 miss, top-5 hit.
    result = evaluate_zero_shot(model, tokenizer, pixel_set([5, 6, 6]), pixel_value, TEMPLATES, progress=False)
    assert result["top1"] == pytest.approx(200 / 3) and result["top5"] == 100.0


def test_error_paths() -> None:
    tokenizer = word_level_tokenizer()
    model = LookupModel(tokenizer, prompt_vectors(), torch.eye(DIM))
    with pytest.raises(ValueError, match="class_names is empty"):
        zero_shot_classifier(model, tokenizer, [], TEMPLATES)
    with pytest.raises(ValueError, match=r"template 'a photo.' needs exactly one '\{\}'"):
        zero_shot_classifier(model, tokenizer, CLASSES, ["a photo of a {}.", "a photo."])
    with pytest.raises(ValueError, match="no prompt templates given"):
        zero_shot_classifier(model, tokenizer, CLASSES, [])
    with pytest.raises(ValueError, match="unknown template set 'imagenet81'"):
        zero_shot_classifier(model, tokenizer, CLASSES, "imagenet81")
    with pytest.raises(ValueError, match="lookup has no class names"):
        evaluate_zero_shot(model, tokenizer, pixel_set([0, 1], class_names=None), pixel_value, TEMPLATES)
    with pytest.raises(ValueError, match="lookup has no class names"):
        evaluate_zero_shot(model, tokenizer, pixel_set([0, 1], class_names=[]), pixel_value, TEMPLATES)
    with pytest.raises(ValueError, match="lookup: some records have no label"):
        evaluate_zero_shot(model, tokenizer, pixel_set([0, None]), pixel_value, TEMPLATES)
    assert model.prompts_seen == 0, "every error is raised before any text is embedded"


def test_imagenet_templates_are_the_clip_papers_80() -> None:
    """The peer's copy of OpenAI's list (open_clip's zero-shot metadata) is the reference."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    assert list(resolve_templates("imagenet")) == [template("{}") for template in OPENAI_IMAGENET_TEMPLATES]
    assert len(set(resolve_templates("imagenet"))) == 80
