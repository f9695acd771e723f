"""One module per modality family; each returns an ``EncoderOutput``."""
from polymodal.encoders.base import EncoderOutput
from polymodal.encoders.image_cnn import ResNetImageEncoder
from polymodal.encoders.image_vit import ViTImageEncoder
from polymodal.encoders.text_rnn import GRUTextEncoder
from polymodal.encoders.text_transformer import TransformerTextEncoder

__all__ = [
    "EncoderOutput",
    "GRUTextEncoder",
    "ResNetImageEncoder",
    "TransformerTextEncoder",
    "ViTImageEncoder",
]
