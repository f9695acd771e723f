"""Evaluation metrics: retrieval recall at K / median rank with its chance level, top-k accuracy, official VQA
accuracy, clustering (NMI, ARI, k-means), and captioning (BLEU, ROUGE-L, CIDEr-D as pycocoevalcap computes them)."""
from polymodal.metrics.caption import (
    CiderDocumentFrequency,
    bleu,
    caption_scores,
    cider_d,
    cider_document_frequency,
    ptb_tokenize,
    rouge_l,
)
from polymodal.metrics.classification import topk_accuracy
from polymodal.metrics.clustering import KMeansResult, adjusted_rand_index, kmeans, normalized_mutual_info
from polymodal.metrics.retrieval import chance_recall, retrieval_metrics
from polymodal.metrics.vqa import VQAReport, normalize_answer, vqa_accuracy, vqa_report

__all__ = [
    "CiderDocumentFrequency",
    "KMeansResult",
    "VQAReport",
    "adjusted_rand_index",
    "bleu",
    "caption_scores",
    "chance_recall",
    "cider_d",
    "cider_document_frequency",
    "kmeans",
    "normalize_answer",
    "normalized_mutual_info",
    "ptb_tokenize",
    "retrieval_metrics",
    "rouge_l",
    "topk_accuracy",
    "vqa_accuracy",
    "vqa_report",
]
