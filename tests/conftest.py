import copy

import pytest

# A ViT + bidirectional GRU small enough that a CPU trains it on 32x32 scenes in seconds (the GRU leaves
# the early plateau sooner than a from-scratch text transformer does on a few hundred steps).
TINY_MODEL = {
    "description": "test model",
    "embed_dim": 64,
    "loss": "clip",
    "init_logit_scale": 2.6593,
    "image": {"type": "vit", "image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "heads": 4,
              "mlp_ratio": 2.0, "pool": "mean"},
    "text": {"type": "gru", "context_length": 24, "vocab_size": 512, "width": 128, "layers": 1,
             "bidirectional": True},
}


@pytest.fixture(scope="session")
def tiny_model_config() -> dict:
    """Shared by the whole session (module-scoped fixtures use it): copy before changing it."""
    return copy.deepcopy(TINY_MODEL)
