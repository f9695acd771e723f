"""HF BlipForConditionalGeneration → polymodal captioner: next-token logits (teacher-forced and through the KV
cache), greedy captions with and without a prompt, decoded strings, tokenizer and pixels, all against HF's own
model and processor; the imported model saved, reloaded and fine-tuned by polymodal's trainer; and errors that
name the file and key."""
import json
import re

import pytest
import torch
from transformers import BlipForConditionalGeneration, BlipProcessor

import polymodal
from polymodal import load_run_config, run_training
from polymodal.data.packaged import skimage_photos
from polymodal.data.transforms import image_transform
from polymodal.interop.hf_blip import load_hf_blip
from polymodal.model_io import load_tokenizer

from .helpers import copy_with_changed_file

ATOL = 1e-5
# HF counts the start token in max_length; polymodal counts generated tokens (EOS included).
HF_MAX_LENGTH = 12
CAPTIONS = ["a picture of two dogs", "the cat , sitting on grass!", "a red dog"]
PROMPT = "a picture of"
WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def imported(hf_blip_dir):
    return load_hf_blip(hf_blip_dir)


@pytest.fixture(scope="module")
def processor(hf_blip_dir):
    return BlipProcessor.from_pretrained(hf_blip_dir)


@pytest.fixture(scope="module")
def photos():
    """Twelve of scikit-image's photos (square and not) as PIL images."""
    dataset = skimage_photos()
    return [dataset.load_image(record) for record in dataset.records[:12]]


@pytest.fixture(scope="module")
def pixels(processor, photos):
    return processor(images=photos, return_tensors="pt")["pixel_values"]


def _hf_model(directory):
    return BlipForConditionalGeneration.from_pretrained(directory).eval()


def _hf_continuations(output: torch.Tensor, prefix: int, eos_id: int) -> list[list[int]]:
    """HF's generated ids after the ``prefix`` tokens it was given, up to (excluding) the first EOS."""
    rows = [row[prefix:] for row in output.tolist()]
    return [row[: row.index(eos_id)] if eos_id in row else row for row in rows]


def test_tokenizer_frames_captions_as_blip_decoder_reads_them(imported, processor):
    tokenizer, model = imported.tokenizer, imported.model
    hf = processor.tokenizer(CAPTIONS, padding=True, return_tensors="pt")
    ours = tokenizer(CAPTIONS)
    # HF's generate() overwrites the processor's [CLS] with the decoder's start token ([DEC]).
    expected = hf["input_ids"].clone()
    expected[:, 0] = processor.tokenizer.bos_token_id
    assert torch.equal(ours["input_ids"], expected)
    assert torch.equal(ours["attention_mask"], hf["attention_mask"])
    # Training refills the model's special ids from the tokenizer: they must be BLIP's.
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (model.bos_id, model.eos_id, model.pad_id)
    assert model.bos_id == processor.tokenizer.convert_tokens_to_ids("[DEC]")
    for ids in ours["input_ids"].tolist():
        assert tokenizer.decode(ids) == processor.decode(ids, skip_special_tokens=True)
    assert tokenizer.decode(ours["input_ids"][1].tolist()) == "the cat, sitting on grass!"


def test_pixels_equal_the_blip_processor_on_real_photos(imported, photos, pixels):
    assert len({photo.size for photo in photos}) > 3, "the photos should include non-square ones"
    transform = image_transform(imported.model.preprocess)
    ours = torch.stack([transform(photo) for photo in photos])
    torch.testing.assert_close(ours, pixels, atol=ATOL, rtol=0)


@pytest.mark.parametrize("directory", ["hf_blip_dir", "hf_blip_untied_dir"])
def test_next_token_logits_match_hf_with_and_without_the_kv_cache(directory, pixels, request):
    directory = request.getfixturevalue(directory)
    imported, hf_model = load_hf_blip(directory), _hf_model(directory)
    model, batch = imported.model, imported.tokenizer(CAPTIONS)
    images = pixels[: len(CAPTIONS)]
    real = batch["attention_mask"][:, 1:].bool()  # logits of padding positions predict nothing
    with torch.no_grad():
        expected = hf_model(pixel_values=images, **batch).logits[:, :-1]
        teacher_forced = model(image=images, **batch)["logits"]
        cache = model.decoder.init_cache(model.image_encoder(images).tokens)
        stepped = torch.stack([model.decoder.step(batch["input_ids"][:, t:t + 1], cache, t)[0]
                               for t in range(batch["input_ids"].shape[1] - 1)], dim=1)
    torch.testing.assert_close(teacher_forced[real], expected[real], atol=ATOL, rtol=0)
    torch.testing.assert_close(stepped[real], expected[real], atol=ATOL, rtol=0)


@pytest.mark.parametrize("directory", ["hf_blip_dir", "hf_blip_untied_dir"])
def test_greedy_captions_are_hf_generates(directory, pixels, request):
    directory = request.getfixturevalue(directory)
    imported, hf_model = load_hf_blip(directory), _hf_model(directory)
    model, processor = imported.model, BlipProcessor.from_pretrained(directory)
    with torch.no_grad():
        hf_output = hf_model.generate(pixel_values=pixels, num_beams=1, do_sample=False, max_length=HF_MAX_LENGTH)
    ours = model.generate(pixels, method="greedy", max_length=HF_MAX_LENGTH - 1).sequences
    expected = _hf_continuations(hf_output, 1, model.eos_id)
    lengths = {len(caption) for caption in expected}
    assert len(lengths) > 2 and max(lengths) == HF_MAX_LENGTH - 1, "some captions should end early, some not"
    assert len({tuple(caption) for caption in expected}) > len(expected) // 2, "captions should depend on the image"
    assert ours == expected
    assert [imported.tokenizer.decode(ids) for ids in ours] == processor.batch_decode(hf_output,
                                                                                     skip_special_tokens=True)


def test_greedy_captions_continue_a_prompt_as_hf_generates(imported, processor, hf_blip_dir, pixels):
    model, hf_model = imported.model, _hf_model(hf_blip_dir)
    prompt = processor(text=[PROMPT] * len(pixels), return_tensors="pt")
    prompt_ids = imported.tokenizer(PROMPT)["input_ids"][0, 1:-1].tolist()  # without [DEC] and [SEP]
    with torch.no_grad():
        hf_output = hf_model.generate(pixel_values=pixels, **prompt, max_length=HF_MAX_LENGTH)
    ours = model.generate(pixels, method="greedy", prompt_ids=prompt_ids,
                          max_length=HF_MAX_LENGTH - 1 - len(prompt_ids)).sequences
    assert ours == _hf_continuations(hf_output, 1 + len(prompt_ids), model.eos_id)
    assert len({tuple(caption) for caption in ours}) > 1
    assert [imported.tokenizer.decode(prompt_ids + ids) for ids in ours] == processor.batch_decode(
        hf_output, skip_special_tokens=True)


@pytest.mark.filterwarnings("ignore:Using the model-agnostic default")
def test_generation_defaults_are_hfs(imported, hf_blip_dir, pixels):
    """Without settings, ``generate`` decodes as HF's ``generate()`` does without arguments (greedy, 20 new
    tokens)."""
    with torch.no_grad():
        hf_output = _hf_model(hf_blip_dir).generate(pixel_values=pixels[:4])
    assert imported.model.generate(pixels[:4]).sequences == _hf_continuations(hf_output, 1, imported.model.eos_id)


def test_a_prompt_outside_the_vocabulary_is_refused(imported, pixels):
    with pytest.raises(ValueError, match=r"prompt_ids: 999 is not a token id"):
        imported.model.generate(pixels[:1], prompt_ids=[5, 999])


def test_saved_and_reloaded_import_captions_identically(imported, pixels, tmp_path):
    directory = polymodal.save_model(imported.model, tmp_path / "blip", imported.tokenizer)
    loaded, tokenizer = polymodal.load_model(directory), load_tokenizer(directory)
    assert loaded.config["family"] == "captioner" and loaded.preprocess == imported.model.preprocess
    assert tokenizer.tokenizer.to_str() == imported.tokenizer.tokenizer.to_str()
    assert loaded.generate(pixels).sequences == imported.model.generate(pixels).sequences
    with torch.no_grad():
        batch = tokenizer(CAPTIONS)
        assert torch.equal(loaded(image=pixels[:3], **batch)["logits"],
                           imported.model(image=pixels[:3], **batch)["logits"])


@pytest.mark.slow
def test_fine_tunes_with_polymodal_trainer(imported, tmp_path):
    """The saved import is an ordinary captioner run config's ``model``: cross-entropy on the shapes world lowers
    the loss, and the fine-tuned model still starts its captions with BLIP's [DEC]."""
    start = polymodal.save_model(imported.model, tmp_path / "blip", imported.tokenizer)
    data = {"train": {"name": "shapes", "split": "train", "size": 32}, "val": None}
    result = run_training(load_run_config({
        "model": str(start), "data": data, "out": str(tmp_path / "run"),
        "train": {"batch_size": 16, "lr": 1e-2, "epochs": 3, "precision": "fp32", "log_every": 1,
                  "checkpoint_every": 0, "warmup_steps": 0}}), progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in records if "loss" in record]
    assert len(losses) == 6 and losses[-1] < 0.85 * losses[0]
    tuned = polymodal.load_model(result.checkpoint)
    assert tuned.bos_id == imported.model.bos_id == imported.tokenizer.tokenizer.token_to_id("[DEC]")


def test_not_a_checkpoint_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"config\.json: missing; .* is not an HF checkpoint directory"):
        load_hf_blip(tmp_path)


def test_another_architecture_is_refused(hf_blip_dir, tmp_path):
    directory = copy_with_changed_file(hf_blip_dir, tmp_path / "1", "config.json",
                                       lambda config: config.update(model_type="clip"))
    with pytest.raises(ValueError, match=r"config\.json: model_type = 'clip' is not supported"):
        load_hf_blip(directory)
    directory = copy_with_changed_file(hf_blip_dir, tmp_path / "2", "config.json",
                                       lambda config: config.update(architectures=["BlipForQuestionAnswering"]))
    with pytest.raises(ValueError, match=r"config\.json: architectures = \['BlipForQuestionAnswering'\]"):
        load_hf_blip(directory)


@pytest.mark.parametrize(("key", "shape"), [
    ("text_decoder.bert.encoder.layer.1.crossattention.self.key.weight", (32, 48)),
    ("vision_model.embeddings.position_embedding", (1, 5, 32)),  # BLIP's leading batch dimension is kept
])
def test_mismatched_shape_names_file_and_key(hf_blip_dir, tmp_path, key, shape):
    directory = copy_with_changed_file(hf_blip_dir, tmp_path / "1", WEIGHTS,
                                       lambda state: state.update({key: torch.zeros(shape)}))
    with pytest.raises(ValueError, match=rf"model\.safetensors: key '{key}' has shape {re.escape(str(shape))}"):
        load_hf_blip(directory)


def test_missing_and_unexpected_keys_are_named(hf_blip_dir, tmp_path):
    key = "text_decoder.cls.predictions.transform.LayerNorm.bias"
    directory = copy_with_changed_file(hf_blip_dir, tmp_path / "1", WEIGHTS, lambda state: state.pop(key))
    with pytest.raises(ValueError, match=rf"model\.safetensors: missing key '{key}'"):
        load_hf_blip(directory)
    directory = copy_with_changed_file(hf_blip_dir, tmp_path / "2", WEIGHTS,
                                       lambda state: state.update(extra=torch.ones(1)))
    with pytest.raises(ValueError, match=r"model\.safetensors: unexpected key 'extra'"):
        load_hf_blip(directory)


def test_a_processor_size_other_than_the_towers_is_refused(hf_blip_dir, tmp_path):
    directory = copy_with_changed_file(hf_blip_dir, tmp_path / "1", "processor_config.json",
                                       lambda processor: processor["image_processor"].update(size={"height": 48,
                                                                                                    "width": 48}))
    with pytest.raises(ValueError, match=r"processor_config\.json: size = 48 differs"):
        load_hf_blip(directory)
