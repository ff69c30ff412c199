"""Exports of a loaded model for serving: ONNX graphs (``ofa-export onnx``) that ``ofa_runtime`` runs with
onnxruntime and numpy alone."""
from ofa.export.onnx_export import export_onnx, generator_settings

__all__ = ["export_onnx", "generator_settings"]
