"""HF ViltForQuestionAnswering → polymodal vqa model: logits and answers equal HF's, the checkpoint's tokenizer and
preprocessing, the model directory, fine-tuning with the trainer, and errors that name the file and key."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertTokenizer, ViltForQuestionAnswering, ViltImageProcessor

import polymodal
from polymodal import load_run_config, run_training
from polymodal.data import packaged
from polymodal.data.transforms import image_transform
from polymodal.interop.hf_vilt import load_hf_vilt
from polymodal.model_io import load_tokenizer
from polymodal.tasks.vqa import answer_question
from tests.run_helpers import polymodal_cli, read_log

from .helpers import VQA_ANSWERS, VQA_QUESTIONS

ATOL = 1e-5


@pytest.fixture(scope="module")
def imported(hf_vilt_dir):
    return load_hf_vilt(hf_vilt_dir)


@pytest.fixture(scope="module")
def hf_model(hf_vilt_dir):
    return ViltForQuestionAnswering.from_pretrained(hf_vilt_dir).eval()


@pytest.fixture(scope="module")
def photos():
    """Real photos: the square ones (the case polymodal's preprocessing reproduces exactly)."""
    pytest.importorskip("skimage")
    dataset = packaged.skimage_photos()
    images = [dataset.load_image(record) for record in dataset.records]
    return [image for image in images if image.width == image.height][:4]


def _hf_inputs(hf_vilt_dir, images, questions):
    """What HF's own tokenizer and image processor make of ``images`` and ``questions``."""
    text = BertTokenizer.from_pretrained(hf_vilt_dir)(questions, padding=True, return_tensors="pt")
    pixels = ViltImageProcessor.from_pretrained(hf_vilt_dir)(images, return_tensors="pt")
    return {**text, **pixels}


def test_tokenizer_matches_hf(imported, hf_vilt_dir):
    hf = BertTokenizer.from_pretrained(hf_vilt_dir)
    expected = hf(VQA_QUESTIONS, padding=True, return_tensors="pt")
    ours = imported.tokenizer(VQA_QUESTIONS)
    assert torch.equal(ours["input_ids"], expected["input_ids"])
    assert torch.equal(ours["attention_mask"], expected["attention_mask"])
    assert imported.tokenizer.decode(ours["input_ids"][0].tolist()) == "what colour is the circle?"
    # ViLT's position table has 40 rows: longer questions are cut there, [SEP] kept, as HF truncates.
    long = " ".join(["how many red circles are there?"] * 10)
    truncated = hf([long], truncation=True, max_length=40, return_tensors="pt")["input_ids"]
    assert torch.equal(imported.tokenizer([long])["input_ids"], truncated)


def test_preprocessing_gives_hfs_pixels_for_a_square_photo(imported, hf_vilt_dir, photos):
    preprocess = imported.model.preprocess
    assert (preprocess.image_size, preprocess.resize_size, preprocess.interpolation) == (32, 32, "bicubic")
    hf = _hf_inputs(hf_vilt_dir, photos, ["what colour is the circle?"] * len(photos))
    assert hf["pixel_values"].shape == (len(photos), 3, 32, 32) and bool(hf["pixel_mask"].all())
    ours = torch.stack([image_transform(preprocess)(photo) for photo in photos])
    # HF fuses rescale and normalise into one step; the float rounding of the two orders differs by one ulp.
    torch.testing.assert_close(ours, hf["pixel_values"], atol=1e-6, rtol=0)


def test_logits_and_answers_match_hf(imported, hf_model, hf_vilt_dir, photos):
    questions = VQA_QUESTIONS[: len(photos)]
    hf = _hf_inputs(hf_vilt_dir, photos, questions)
    ours_text = imported.tokenizer(questions)
    with torch.no_grad():
        expected = hf_model(**hf).logits
        logits = imported.model(image=hf["pixel_values"], **ours_text)["logits"]
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)
    hf_answers = [hf_model.config.id2label[i] for i in expected.argmax(-1).tolist()]
    assert len(set(hf_answers)) > 1  # the tiny model's answers depend on the inputs, so the comparison can fail
    transform = image_transform(imported.model.preprocess)
    ours = [answer_question(imported.model, imported.tokenizer, transform, photo, question, top_k=1)[0][0]
            for photo, question in zip(photos, questions)]
    assert ours == hf_answers
    assert imported.model.config["answers"] == VQA_ANSWERS


@pytest.mark.slow  # a CLI subprocess / a training run: a few seconds each
def test_saves_loads_and_answers_from_the_command_line(imported, hf_model, hf_vilt_dir, photos, tmp_path):
    directory = polymodal.save_model(imported.model, tmp_path / "vilt", imported.tokenizer)
    loaded, tokenizer = polymodal.load_model(directory), load_tokenizer(directory)
    assert loaded.preprocess == imported.model.preprocess and tokenizer.context_length == 40
    batch = tokenizer(VQA_QUESTIONS)
    pixels = torch.randn(len(VQA_QUESTIONS), 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(image=pixels, **batch)["logits"], imported.model(image=pixels, **batch)["logits"])

    photo, question = photos[0], VQA_QUESTIONS[0]
    photo.save(tmp_path / "photo.png")
    with torch.no_grad():
        expected = hf_model(**_hf_inputs(hf_vilt_dir, [photo], [question])).logits[0]
    done = polymodal_cli("vqa", str(directory), "--image", str(tmp_path / "photo.png"), "--question", question,
                         "-k", "2", "--json")
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)["answers"]
    top = expected.sigmoid().topk(2)
    assert [row["answer"] for row in answers] == [VQA_ANSWERS[i] for i in top.indices.tolist()]
    assert [row["probability"] for row in answers] == pytest.approx(top.values.tolist(), abs=1e-4)


@pytest.mark.slow  # a CLI subprocess / a training run: a few seconds each
def test_fine_tunes_with_the_trainer(imported, tmp_path):
    directory = polymodal.save_model(imported.model, tmp_path / "vilt", imported.tokenizer)
    data = {"train": {"name": "shapes", "split": "train", "size": 16}, "val": None}
    train = {"epochs": 4, "batch_size": 32, "lr": 3e-3, "warmup_steps": 0, "precision": "fp32", "log_every": 1,
             "checkpoint_every": 0}
    result = run_training(load_run_config({"model": str(directory), "data": data, "train": train,
                                           "out": str(tmp_path / "run")}), progress=False)
    losses = [record["loss"] for record in read_log(tmp_path / "run") if "loss" in record]
    assert len(losses) == 16 and all(torch.isfinite(torch.tensor(losses)))
    # Four epochs of the same 128 questions: the last epoch's loss is well below the first's.
    assert sum(losses[-4:]) < 0.7 * sum(losses[:4])
    # The answer list is the checkpoint's, not one re-counted from the training set.
    assert polymodal.load_model(result.checkpoint).config["answers"] == VQA_ANSWERS


# --- bad input ---------------------------------------------------------------------------------------------------


def _copy_with(hf_vilt_dir, tmp_path, config=None, weights=None, processor=None):
    """A copy of the checkpoint with ``config.json`` / the weights / ``preprocessor_config.json`` changed."""
    directory = tmp_path / "changed"
    shutil.copytree(hf_vilt_dir, directory)
    for name, change in (("config.json", config), ("preprocessor_config.json", processor)):
        if change is not None:
            content = json.loads((directory / name).read_text())
            change(content)
            (directory / name).write_text(json.dumps(content))
    if weights is not None:
        state = load_file(directory / "model.safetensors")
        weights(state)
        save_file(state, str(directory / "model.safetensors"))
    return directory


def test_not_a_checkpoint_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=rf"config\.json: missing; {tmp_path} is not an HF checkpoint"):
        load_hf_vilt(tmp_path)


def test_a_hub_name_that_cannot_be_fetched_is_named():
    with pytest.raises(ValueError, match=r"polymodal-tests/no-such-vilt: no such directory, and the HF hub cannot"):
        load_hf_vilt("polymodal-tests/no-such-vilt")


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c.update(model_type="bert"), r"config\.json: model_type = 'bert' is not supported"),
    (lambda c: c.update(architectures=["ViltForMaskedLM"]),
     r"config\.json: architectures = \['ViltForMaskedLM'\]: this importer reads only ViltForQuestionAnswering"),
    (lambda c: c.update(hidden_act="relu"), r"config\.json: hidden_act = 'relu' is not supported"),
    (lambda c: c.update(max_image_length=8), r"config\.json: max_image_length = 8 .*random subset"),
    (lambda c: c.update(id2label={**c["id2label"], "1": "Yes"}), r"config\.json: id2label: answer 'Yes'"),
])
def test_unsupported_configs_name_the_file_and_field(hf_vilt_dir, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        load_hf_vilt(_copy_with(hf_vilt_dir, tmp_path, config=change))


def test_a_processor_size_other_than_the_position_tables_is_refused(hf_vilt_dir, tmp_path):
    directory = _copy_with(hf_vilt_dir, tmp_path, processor=lambda p: p.update(size={"shortest_edge": 64}))
    with pytest.raises(ValueError, match=r"preprocessor_config\.json: size = .* 64-pixel images.* image_size is 32"):
        load_hf_vilt(directory)


def test_mismatched_shape_names_file_and_key(hf_vilt_dir, tmp_path):
    key = "vilt.encoder.layer.1.intermediate.dense.weight"
    directory = _copy_with(hf_vilt_dir, tmp_path, weights=lambda state: state.update({key: torch.zeros(80, 32)}))
    with pytest.raises(ValueError, match=rf"model\.safetensors: key '{key}' has shape \(80, 32\)"):
        load_hf_vilt(directory)


def test_position_table_of_another_grid_names_file_and_key(hf_vilt_dir, tmp_path):
    key = "vilt.embeddings.position_embeddings"
    directory = _copy_with(hf_vilt_dir, tmp_path, weights=lambda state: state.update({key: torch.zeros(1, 10, 32)}))
    with pytest.raises(ValueError, match=rf"model\.safetensors: key '{key}' has shape \(1, 10, 32\), the config says "
                                         r"\(1, 17, 32\)"):
        load_hf_vilt(directory)


def test_missing_and_unexpected_keys_are_named(hf_vilt_dir, tmp_path):
    key = "vilt.pooler.dense.bias"
    with pytest.raises(ValueError, match=rf"model\.safetensors: missing key '{key}'"):
        load_hf_vilt(_copy_with(hf_vilt_dir, tmp_path, weights=lambda state: state.pop(key)))
    extra = _copy_with(hf_vilt_dir, tmp_path / "2", weights=lambda state: state.update(extra=torch.ones(1)))
    with pytest.raises(ValueError, match=r"model\.safetensors: unexpected key 'extra'"):
        load_hf_vilt(extra)
