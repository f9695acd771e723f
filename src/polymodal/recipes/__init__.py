"""Runs assembled from a config: the one place data, tokenizer, model, loss, loader and evaluator are built
(``training.py``) and handed to ``train/``; the quickstart on top of it (``quickstart.py``)."""
