"""`polymodal zero-shot` straight on an HF CLIP directory, checked against HF CLIPModel with CLIP's recipe
(the 80 ImageNet templates, normalised text embeddings averaged per label) computed here with HF alone."""
import json

import torch
from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

from polymodal.data.packaged import skimage_photos
from polymodal.tasks.prompt_templates import IMAGENET_TEMPLATES

from tests.run_helpers import polymodal_cli


def features(output):
    """transformers 5 wraps the projected features in an output whose pooler_output holds them."""
    return getattr(output, "pooler_output", output)


def test_zero_shot_on_an_hf_clip_directory_matches_hf(hf_clip_dir, tmp_path):
    photos = skimage_photos()
    paths = []
    for index in range(2):
        paths.append(tmp_path / f"photo{index}.png")
        photos.image(index).save(paths[-1])
    labels = ["cat", "dog", "photo"]
    done = polymodal_cli("zero-shot", str(hf_clip_dir), "--labels", ",".join(labels), "--json", "--device", "cpu",
                         *map(str, paths))
    assert done.returncode == 0, done.stderr
    predicted = json.loads(done.stdout)["predictions"]

    model = CLIPModel.from_pretrained(hf_clip_dir).eval()
    tokenizer = CLIPTokenizer.from_pretrained(hf_clip_dir)
    processor = CLIPImageProcessor.from_pretrained(hf_clip_dir)
    with torch.no_grad():
        per_label = []
        for label in labels:
            prompts = tokenizer([t.format(label) for t in IMAGENET_TEMPLATES], padding=True, truncation=True,
                                max_length=16, return_tensors="pt")
            text = torch.nn.functional.normalize(features(model.get_text_features(**prompts)), dim=-1)
            per_label.append(torch.nn.functional.normalize(text.mean(0), dim=0))
        pixels = processor([photos.image(0), photos.image(1)], return_tensors="pt")["pixel_values"]
        image = torch.nn.functional.normalize(features(model.get_image_features(pixel_values=pixels)), dim=-1)
        expected = (model.logit_scale.exp() * image @ torch.stack(per_label).T).softmax(-1)
    for row, probabilities in zip(predicted, expected):
        got = {entry["label"]: entry["probability"] for entry in row["labels"]}
        assert list(got) == [labels[i] for i in probabilities.argsort(descending=True).tolist()]
        for label, probability in zip(labels, probabilities.tolist()):
            assert abs(got[label] - probability) <= 1e-4, (label, got[label], probability)


def test_zero_shot_refuses_a_folder_that_is_no_checkpoint(tmp_path):
    done = polymodal_cli("zero-shot", str(tmp_path), "--labels", "a,b", str(tmp_path / "x.png"))
    assert done.returncode == 2 and "not a checkpoint directory (no config.json)" in done.stderr
