"""ONNX export of dual encoders: onnxruntime reproduces polymodal's fp32 embeddings (1e-4, real photos and
prompts) and HF CLIP's; batch and text length are dynamic; the folder works with onnxruntime + tokenizers alone;
int8 keeps the embeddings' direction; bad folders and models are refused with the file or field named."""
import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import CLIPModel

from polymodal import create_model
from polymodal.data.packaged import skimage_photos
from polymodal.data.tokenizers import TextTokenizer
from polymodal.data.transforms import image_transform
from polymodal.interop import load_hf_clip
from polymodal.interop.onnx_export import MANIFEST, OnnxDualEncoder, export_onnx
from polymodal.tasks.embed import embed_images, embed_texts
from polymodal.tasks.search import embed_queries
from polymodal.tasks.zero_shot import evaluate_zero_shot, zero_shot_predict

from .helpers import CAPTIONS

ATOL = 1e-4
PHOTOS = skimage_photos()
PROMPTS = [caption for record in PHOTOS.records for caption in record.captions]


@pytest.fixture(scope="module")
def hf_clip(hf_clip_dir):
    return load_hf_clip(hf_clip_dir)


@pytest.fixture(scope="module")
def hf_export(hf_clip, tmp_path_factory):
    """The tiny HF CLIP (causal text tower pooled at end-of-text, QuickGELU, pre-norm ViT), with int8 graphs."""
    return export_onnx(hf_clip.model, hf_clip.tokenizer, tmp_path_factory.mktemp("onnx") / "hf", int8=True)


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """polymodal's own clip-tiny preset (bidirectional text tower, mean pooling) with a BPE of the prompts."""
    torch.manual_seed(0)
    model = create_model("clip-tiny").eval()
    tokenizer = TextTokenizer.train_bpe(PROMPTS * 2 + CAPTIONS, vocab_size=400, context_length=32)
    directory = export_onnx(model, tokenizer, tmp_path_factory.mktemp("onnx") / "native")
    return model, tokenizer, directory


@pytest.fixture(scope="module", params=["hf", "native"])
def case(request, hf_clip, hf_export, native):
    if request.param == "hf":
        return hf_clip.model, hf_clip.tokenizer, hf_export
    return native


def _pixels(model, count):
    transform = image_transform(model.preprocess)
    return torch.stack([transform(PHOTOS.image(i)) for i in range(count)])


@pytest.mark.parametrize("batch", [1, 5])
def test_onnxruntime_matches_polymodal_on_photos_and_prompts(case, batch):
    model, tokenizer, directory = case
    onnx = OnnxDualEncoder(directory)
    pixels = _pixels(model, batch)
    # Prompts of different lengths, so the batch is padded and the text length axis varies with the batch.
    tokens = tokenizer(PROMPTS[-batch:])
    with torch.no_grad():
        image, text = model.encode_image(pixels), model.encode_text(**tokens)
    torch.testing.assert_close(onnx.encode_image(pixels), image, atol=ATOL, rtol=0)
    torch.testing.assert_close(onnx.encode_text(**tokens), text, atol=ATOL, rtol=0)
    # The graphs return encode_*'s unit-norm embeddings, not the raw projections.
    torch.testing.assert_close(onnx.encode_image(pixels).norm(dim=-1), torch.ones(batch))


def test_onnxruntime_matches_hf_clip(hf_clip_dir, hf_clip, hf_export):
    hf = CLIPModel.from_pretrained(hf_clip_dir).eval()
    pixels, tokens = _pixels(hf_clip.model, 5), hf_clip.tokenizer(PROMPTS[:5])
    with torch.no_grad():
        hf_image = hf.get_image_features(pixel_values=pixels)
        hf_text = hf.get_text_features(**tokens)
    hf_image, hf_text = (getattr(output, "pooler_output", output) for output in (hf_image, hf_text))
    onnx = OnnxDualEncoder(hf_export)
    torch.testing.assert_close(onnx.encode_image(pixels), F.normalize(hf_image, dim=-1), atol=ATOL, rtol=0)
    torch.testing.assert_close(onnx.encode_text(**tokens), F.normalize(hf_text, dim=-1), atol=ATOL, rtol=0)


def test_folder_runs_with_onnxruntime_and_tokenizers_alone(native):
    """What a user without polymodal does: read the manifest, tokenize with ``tokenizers``, run the sessions."""
    model, tokenizer, directory = native
    manifest = json.loads((directory / MANIFEST).read_text())
    assert manifest["preprocess"]["image_size"] == 64 and manifest["context_length"] == 32
    bare = Tokenizer.from_file(str(directory / manifest["tokenizer"]))
    encodings = bare.encode_batch(PROMPTS[:4])
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    text = ort.InferenceSession(str(directory / manifest["text"]["file"]))
    assert [i.name for i in text.get_inputs()] == list(manifest["text"]["inputs"])
    (embeddings,) = text.run([manifest["text"]["output"]["name"]], {"input_ids": ids, "attention_mask": mask})
    with torch.no_grad():
        expected = model.encode_text(**tokenizer(PROMPTS[:4]))
    np.testing.assert_allclose(embeddings, expected.numpy(), atol=ATOL, rtol=0)


def test_embedding_tasks_take_the_onnx_encoder(native):
    model, tokenizer, directory = native
    onnx = OnnxDualEncoder(directory, threads=1)
    subset = PHOTOS.subset(range(6))
    transform = image_transform(model.preprocess)
    torch.testing.assert_close(embed_images(onnx, subset, onnx.transform, batch_size=4, progress=False),
                               embed_images(model, subset, transform, batch_size=4, progress=False),
                               atol=ATOL, rtol=0)
    torch.testing.assert_close(embed_texts(onnx, onnx.tokenizer, PROMPTS, batch_size=8, progress=False),
                               embed_texts(model, tokenizer, PROMPTS, batch_size=8, progress=False),
                               atol=ATOL, rtol=0)


def test_zero_shot_scores_the_onnx_encoder_as_the_model(hf_clip, hf_export):
    transform = image_transform(hf_clip.model.preprocess)
    expected = evaluate_zero_shot(hf_clip.model, hf_clip.tokenizer, PHOTOS, transform, progress=False)
    onnx = OnnxDualEncoder(hf_export)
    assert evaluate_zero_shot(onnx, onnx.tokenizer, PHOTOS, onnx.transform, progress=False) == expected


def test_queries_and_labelled_predictions_take_the_onnx_encoder(hf_clip, hf_export):
    onnx = OnnxDualEncoder(hf_export)
    model, tokenizer = hf_clip.model, hf_clip.tokenizer
    transform = image_transform(model.preprocess)
    torch.testing.assert_close(embed_queries(onnx, onnx.tokenizer, texts=PROMPTS[:5]),
                               embed_queries(model, tokenizer, texts=PROMPTS[:5]), atol=ATOL, rtol=0)
    images = [PHOTOS.image(i) for i in range(4)]
    torch.testing.assert_close(embed_queries(onnx, transform=onnx.transform, images=images),
                               embed_queries(model, transform=transform, images=images), atol=ATOL, rtol=0)
    labels = ["astronaut", "coffee", "cat", "rocket"]
    # The manifest carries the temperature, so probabilities (not only the ranking) are the model's.
    expected = zero_shot_predict(model, tokenizer, transform, images, labels, templates="photo", top_k=4)
    predicted = zero_shot_predict(onnx, onnx.tokenizer, onnx.transform, images, labels, templates="photo", top_k=4)
    assert [[name for name, _ in row] for row in predicted] == [[name for name, _ in row] for row in expected]
    np.testing.assert_allclose([[p for _, p in row] for row in predicted], [[p for _, p in row] for row in expected],
                               atol=ATOL)
    assert onnx.temperature().item() == pytest.approx(model.temperature().item())
    assert onnx.logit_bias is None


def test_int8_keeps_the_embeddings_direction(native, tmp_path):
    model, tokenizer, _ = native
    directory = export_onnx(model, tokenizer, tmp_path / "int8", int8=True)
    fp32, int8 = OnnxDualEncoder(directory), OnnxDualEncoder(directory, int8=True)
    pixels, tokens = _pixels(model, len(PHOTOS)), tokenizer(PROMPTS)
    image_cosine = F.cosine_similarity(int8.encode_image(pixels), fp32.encode_image(pixels))
    text_cosine = F.cosine_similarity(int8.encode_text(**tokens), fp32.encode_text(**tokens))
    # Measured (onnxruntime 1.32, untrained clip-tiny): min 0.9954 (images), 0.9974 (texts) over the 24 photos
    # and their captions; lit-effnet-minilm's real weights keep 0.9945 / 0.9957 (benchmarks/int8_accuracy.py).
    assert image_cosine.min() > 0.99 and text_cosine.min() > 0.99
    # Quantization did happen: the int8 file is smaller and its embeddings are not the float ones.
    manifest = json.loads((directory / MANIFEST).read_text())
    assert manifest["size"]["text.int8.onnx"] < manifest["size"]["text.onnx"]
    assert not torch.allclose(int8.encode_text(**tokens), fp32.encode_text(**tokens), atol=1e-5)


def test_missing_graph_is_named(hf_export, tmp_path):
    copy = shutil.copytree(hf_export, tmp_path / "copy")
    (copy / "image.onnx").unlink()
    with pytest.raises(ValueError, match=r"image\.onnx is missing"):
        OnnxDualEncoder(copy)


def test_folder_without_export_is_refused(tmp_path):
    with pytest.raises(ValueError, match=f"{MANIFEST}: missing"):
        OnnxDualEncoder(tmp_path)


def test_int8_of_a_float_only_export_names_the_field(native):
    with pytest.raises(ValueError, match=r"field image\.int8_file is null"):
        OnnxDualEncoder(native[2], int8=True)


def test_foreign_manifest_names_the_field(hf_export, tmp_path):
    copy = shutil.copytree(hf_export, tmp_path / "copy")
    manifest = json.loads((copy / MANIFEST).read_text())
    (copy / MANIFEST).write_text(json.dumps({**manifest, "text": {**manifest["text"], "file": None}}))
    with pytest.raises(ValueError, match=r"field text\.file = None"):
        OnnxDualEncoder(copy)


def test_a_model_that_does_not_embed_is_refused(tmp_path):
    model = create_model("vqa-concat-tiny")
    with pytest.raises(ValueError, match="has no encode_image"):
        export_onnx(model, None, tmp_path / "out")


def test_a_recurrent_text_tower_is_refused_by_name(native, tmp_path, tiny_model_config):
    _, tokenizer, _ = native
    with pytest.raises(ValueError, match=r"text_encoder\.gru is a GRU: .*transformer text tower"):
        export_onnx(create_model(tiny_model_config), tokenizer, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_refused(native, tmp_path):
    model, tokenizer, _ = native
    (tmp_path / "taken").write_text("not a folder")
    with pytest.raises(ValueError, match="is a file"):
        export_onnx(model, tokenizer, tmp_path / "taken")
