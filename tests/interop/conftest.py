"""Fixtures: a tiny HF CLIPModel directory, written once per session."""
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("open_clip")

from transformers import (  # noqa: E402
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    ViltConfig,
    ViltForQuestionAnswering,
    ViltImageProcessor,
)

from .helpers import (  # noqa: E402
    MEAN,
    STD,
    VQA_ANSWERS,
    perturb,
    tiny_bert_tokenizer,
    tiny_clip_tokenizer,
    tiny_siglip_tokenizer,
)


@pytest.fixture(scope="session")
def hf_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``save_pretrained`` of a 2-layer CLIPModel (QuickGELU, as OpenAI's), its tokenizer and image processor."""
    directory = tmp_path_factory.mktemp("hf-clip")
    tokenizer = tiny_clip_tokenizer()
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    config = CLIPConfig(
        projection_dim=24,
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 16, **special},
        vision_config={"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
    )
    torch.manual_seed(0)
    perturb(CLIPModel(config), seed=1).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}, image_mean=MEAN,
                       image_std=STD).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def hf_vilt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``save_pretrained`` of a 2-layer ViltForQuestionAnswering (32 px images, 8 px patches) answering the shapes
    world's questions, its BERT tokenizer and image processor."""
    directory = tmp_path_factory.mktemp("hf-vilt")
    tokenizer = tiny_bert_tokenizer()
    config = ViltConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, image_size=32, patch_size=8, max_position_embeddings=40,
                        id2label=dict(enumerate(VQA_ANSWERS)),
                        label2id={answer: i for i, answer in enumerate(VQA_ANSWERS)})
    torch.manual_seed(0)
    perturb(ViltForQuestionAnswering(config), seed=3, scale=0.3).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    ViltImageProcessor(size={"shortest_edge": 32}).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def hf_siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``save_pretrained`` of a 2-layer SiglipModel (text 32 wide, image 48) with its SentencePiece tokenizer and
    image processor (``SiglipProcessor``), the temperature above CLIP's clamp as released SigLIPs have it."""
    pytest.importorskip("sentencepiece")
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    directory = tmp_path_factory.mktemp("hf-siglip")
    tokenizer = tiny_siglip_tokenizer(directory, context_length=16)
    special = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id, "bos_token_id": None}
    config = SiglipConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 16, "projection_size": 48, **special},
        vision_config={"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
    )
    torch.manual_seed(0)
    model = perturb(SiglipModel(config), seed=4)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(117.0))
        model.logit_bias.fill_(-3.0)
    model.save_pretrained(directory)
    processor = SiglipImageProcessor(size={"height": 32, "width": 32}, image_mean=MEAN, image_std=STD)
    SiglipProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


SEP_BIAS = 0.6


def _save_hf_blip(directory: Path, tie_embeddings: bool) -> Path:
    """``save_pretrained`` of a 2-layer BlipForConditionalGeneration (32 px images, 8 px patches; text 32 wide), its
    tokenizer and processor. Special tokens other than [SEP] get a very low output bias, and [SEP] a higher one, so
    greedy captions are real words of several lengths: some end early, some run to the length limit."""
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    from .helpers import tiny_blip_tokenizer

    tokenizer = tiny_blip_tokenizer()
    text = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 40, "bos_token_id": tokenizer.bos_token_id,
            "sep_token_id": tokenizer.sep_token_id, "eos_token_id": tokenizer.sep_token_id,
            "pad_token_id": tokenizer.pad_token_id, "tie_word_embeddings": tie_embeddings}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": 32, "patch_size": 8}
    config = BlipConfig(text_config=text, vision_config=vision, tie_word_embeddings=tie_embeddings)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config).eval()
    # HF starts the image tower near zero (initializer_range 1e-10): a larger draw makes captions differ by image.
    perturb(model.vision_model, seed=5, scale=0.3)
    perturb(model.text_decoder, seed=6, scale=0.1)
    head = model.text_decoder.cls.predictions
    with torch.no_grad():
        for bias in (head.bias, head.decoder.bias):  # the same tensor when tied
            bias[tokenizer.all_special_ids] = -10.0
            bias[tokenizer.sep_token_id] = SEP_BIAS
    model.save_pretrained(directory)
    BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def hf_blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BLIP captioner whose output projection is its word embedding (BLIP's released checkpoints)."""
    return _save_hf_blip(tmp_path_factory.mktemp("hf-blip"), tie_embeddings=True)


@pytest.fixture(scope="session")
def hf_blip_untied_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BLIP captioner with an output projection of its own (``tie_word_embeddings: false``)."""
    return _save_hf_blip(tmp_path_factory.mktemp("hf-blip-untied"), tie_embeddings=False)
