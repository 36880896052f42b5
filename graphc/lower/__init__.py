"""IR -> ONNX. The only package that imports onnx."""
from .model import lower, lower_by_reference, serialize, save_model, check_model, check_model_file, DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

__all__ = ["lower", "lower_by_reference", "serialize", "save_model", "check_model", "check_model_file", "DEFAULT_OPSET", "MAX_OPSET", "MIN_OPSET"]
