"""Tiny foreign checkpoints made on the spot (no hub): an HF CLIPModel directory and open_clip models.

Every weight is perturbed away from its library's initialisation (LayerNorms included), so a tensor landing in
the wrong place changes the outputs the parity tests compare.
"""
import open_clip
import torch
from open_clip.tokenizer import bytes_to_unicode
from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# A handful of merges over the 512 byte symbols, enough for whole-word tokens in the test captions.
MERGES = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"), ("p", "h"), ("ph", "o"), ("t", "o</w>"),
          ("pho", "to</w>"), ("o", "f</w>")]
CAPTIONS = ["a photo of a cat", "A DOG", "two  dogs, and a cat!"]
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
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
