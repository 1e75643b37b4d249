"""Evaluation of pretrained encoders: frozen features, linear probe, kNN, metrics, the evaluate stage."""
from geofm.eval.metrics import confusion_matrix, per_class_accuracy, summarize, topk_accuracy

__all__ = ["confusion_matrix", "per_class_accuracy", "summarize", "topk_accuracy"]
