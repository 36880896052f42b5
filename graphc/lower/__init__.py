"""IR -> ONNX. The only package that imports onnx."""
from .model import lower, serialize, save_model, check_model, DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

__all__ = ["lower", "serialize", "save_model", "check_model", "DEFAULT_OPSET", "MAX_OPSET", "MIN_OPSET"]
