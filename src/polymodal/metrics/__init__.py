"""Evaluation metrics: retrieval recall at K / median rank with its chance level, top-k accuracy."""
from polymodal.metrics.classification import topk_accuracy
from polymodal.metrics.retrieval import chance_recall, retrieval_metrics

__all__ = ["chance_recall", "retrieval_metrics", "topk_accuracy"]
