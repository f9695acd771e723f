"""Evaluation metrics: retrieval recall at K / median rank with its chance level, top-k accuracy, official VQA
accuracy, and clustering (NMI, ARI, k-means)."""
from polymodal.metrics.classification import topk_accuracy
from polymodal.metrics.clustering import KMeansResult, adjusted_rand_index, kmeans, normalized_mutual_info
from polymodal.metrics.retrieval import chance_recall, retrieval_metrics
from polymodal.metrics.vqa import VQAReport, normalize_answer, vqa_accuracy, vqa_report

__all__ = [
    "KMeansResult",
    "VQAReport",
    "adjusted_rand_index",
    "chance_recall",
    "kmeans",
    "normalize_answer",
    "normalized_mutual_info",
    "retrieval_metrics",
    "topk_accuracy",
    "vqa_accuracy",
    "vqa_report",
]
