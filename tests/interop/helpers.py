"""Tiny foreign checkpoints made on the spot (no hub): an HF CLIPModel directory and open_clip models.

Every weight is perturbed away from its library's initialisation (LayerNorms included), so a tensor landing in
the wrong place changes the outputs the parity tests compare.
"""
import open_clip
import torch
from open_clip.tokenizer import bytes_to_unicode
from transformers import BertTokenizer, CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# A handful of merges over the 512 byte symbols, enough for whole-word tokens in the test captions.
MERGES = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"), ("p", "h"), ("ph", "o"), ("t", "o</w>"),
          ("pho", "to</w>"), ("o", "f</w>")]
CAPTIONS = ["a photo of a cat", "A DOG", "two  dogs, and a cat!"]
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def perturb(model: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return model.eval()


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """CLIP's BPE over a tiny vocabulary: byte symbols, their word ends, :data:`MERGES`, then the specials
    (end-of-text last, as in OpenAI's vocabulary)."""
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [symbol + "</w>" for symbol in symbols] + ["".join(merge) for merge in MERGES] + [BOS, EOS]
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(vocab)}, merges=MERGES)


# open_clip's ViT-B-32 layout at toy size; the text tower keeps open_clip's real vocabulary (its tokenizer's).
OPEN_CLIP_CONFIG = {
    "embed_dim": 24,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "head_width": 12, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}


def make_open_clip(config: dict) -> torch.nn.Module:
    """The open_clip model ``config`` describes (``custom_text``: the ``CustomTextCLIP`` layout), perturbed."""
    model_class = open_clip.model.CustomTextCLIP if config.get("custom_text") else open_clip.model.CLIP
    torch.manual_seed(0)
    model = model_class(config["embed_dim"], config["vision_cfg"], config["text_cfg"],
                        quick_gelu=config.get("quick_gelu", False))
    return perturb(model, seed=2)


# --- ViLT ---------------------------------------------------------------------------------------------------

# The shapes world's questions and answers, so a tiny ViLT can be fine-tuned on it.
VQA_QUESTIONS = ["What colour is the circle?", "how many   objects are in the image?", "Is there a red star?",
                 "what shape is left of the blue square?"]
VQA_ANSWERS = ["yes", "no", "0", "1", "2", "3", "4", "red", "green", "blue", "white", "yellow", "pink", "orange",
               "purple", "circle", "square", "triangle", "diamond", "cross", "star"]
BERT_WORDS = ["what", "colour", "is", "the", "how", "many", "object", "are", "in", "image", "there", "a", "shape",
              "left", "right", "of", "above", "below", "?", "##s"] + VQA_ANSWERS[2:]


def tiny_bert_tokenizer() -> BertTokenizer:
    """BERT's uncased word pieces over :data:`BERT_WORDS` (plural ``s`` as a suffix piece), specials first."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *BERT_WORDS]
    return BertTokenizer(vocab={token: i for i, token in enumerate(vocab)})


# --- SigLIP ---------------------------------------------------------------------------------------------------

# Real captions a tiny SentencePiece model is trained on (SigLIP's tokenizer is a SentencePiece unigram model).
SPM_CORPUS = ["a photo of a cat", "a photo of a dog", "two dogs and a cat", "a red circle left of a blue square",
              "the quick brown fox jumps over the lazy dog", "a picture of the sea at night",
              "people walking in the park", "a bowl of fruit on a wooden table"]
# Upper case, punctuation, repeated and unusual whitespace, words outside the corpus, a long text (truncated).
SIGLIP_TEXTS = [*CAPTIONS, "  The SEA, at night...  ", "tab\tand\nnewline", "Ünïcödé café", "zebra xylophone 42",
                "under_score and hy-phen", "", " ".join(SPM_CORPUS)]


def tiny_siglip_tokenizer(directory, context_length: int):
    """HF's ``SiglipTokenizer`` over a SentencePiece model trained on :data:`SPM_CORPUS` with T5's special ids
    (pad 0, ``</s>`` 1, unknown 2; no start token), as SigLIP's is; ``spiece.model`` is written to ``directory``."""
    import io

    import sentencepiece
    from transformers import SiglipTokenizer

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SPM_CORPUS * 10), model_writer=model, vocab_size=64, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2)
    (directory / "spiece.model").write_bytes(model.getvalue())
    return SiglipTokenizer(str(directory / "spiece.model"), model_max_length=context_length)


# --- BLIP -----------------------------------------------------------------------------------------------------

# Caption words (plural ``s`` as a suffix piece, punctuation for the decoder's clean-up of spaces).
CAPTION_WORDS = ["a", "photo", "picture", "of", "cat", "dog", "two", "and", "the", "on", "red", "blue", "in",
                 "sitting", "grass", "man", ",", "!", ".", "##s"]


def tiny_blip_tokenizer() -> BertTokenizer:
    """BLIP's tokenizer at toy size: BERT's uncased word pieces over :data:`CAPTION_WORDS`, plus BLIP's added
    ``[DEC]`` (its decoder's start token, HF's ``bos_token``) and ``[ENC]``, last as in BLIP's vocabulary."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *CAPTION_WORDS]
    return BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, bos_token="[DEC]",
                         additional_special_tokens=["[ENC]"])


def copy_with_changed_file(source, destination, name: str, change):
    """A copy of the checkpoint directory ``source`` at ``destination`` whose file ``name`` (the safetensors
    weights, or a JSON config) ``change`` edited in place (its tensors' dict, or the parsed JSON)."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(source, destination)
    file = destination / name
    if file.suffix == ".safetensors":
        state = load_file(file)
        change(state)
        save_file(state, str(file))
    else:
        content = json.loads(file.read_text())
        change(content)
        file.write_text(json.dumps(content))
    return destination
