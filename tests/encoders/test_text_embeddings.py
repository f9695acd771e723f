"""The ``embeddings`` text tower (BERT's embedding layer alone): BERT's numbers, padding invariance, config."""
import pytest
import torch

from polymodal.encoders.build import build_encoder
from polymodal.encoders.text_embeddings import EmbeddingTextEncoder
from polymodal.typed_config import ConfigError

from .helpers import assert_padding_invariant

VOCAB, LENGTH, WIDTH = 30, 12, 16


def test_equals_berts_embedding_layer() -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.models.bert.modeling_bert import BertEmbeddings

    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=WIDTH, max_position_embeddings=LENGTH,
                                     type_vocab_size=2, layer_norm_eps=1e-12)
    torch.manual_seed(0)
    bert = BertEmbeddings(config).eval()
    with torch.no_grad():
        bert.LayerNorm.weight.normal_()  # away from (1, 0), so a norm left out or misplaced shows
        bert.LayerNorm.bias.normal_()
    ours = EmbeddingTextEncoder(VOCAB, LENGTH, WIDTH, segments=2).eval()
    ours.load_state_dict({"token_embed.weight": bert.word_embeddings.weight,
                          "pos_embed.weight": bert.position_embeddings.weight,
                          "segment_embed.weight": bert.token_type_embeddings.weight,
                          "norm.weight": bert.LayerNorm.weight, "norm.bias": bert.LayerNorm.bias})
    ids = torch.randint(0, VOCAB, (3, 7))
    with torch.no_grad():
        assert torch.equal(ours(ids).tokens, bert(ids))  # same sums in the same order: bit for bit


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_padding_does_not_change_a_text(pool: str) -> None:
    encoder = EmbeddingTextEncoder(VOCAB, LENGTH, WIDTH, pool=pool).eval()
    ids = torch.randint(1, VOCAB, (3, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    assert_padding_invariant(encoder, ids, mask, atol=1e-6)
    out = encoder(ids, mask)
    expected = out.tokens[:, 0] if pool == "cls" else (out.tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(out.pooled, expected)
    with pytest.raises(ValueError, match="exceeds context_length 12"):
        encoder(torch.zeros(1, 13, dtype=torch.long))


def test_builds_from_a_config_section() -> None:
    built = build_encoder("text", {"type": "embeddings", "vocab_size": VOCAB, "context_length": LENGTH,
                                   "width": WIDTH, "segments": 2})
    assert isinstance(built.encoder, EmbeddingTextEncoder) and built.context_length == LENGTH
    with pytest.raises(ConfigError, match="text.layers"):
        build_encoder("text", {"type": "embeddings", "vocab_size": VOCAB, "layers": 2})
