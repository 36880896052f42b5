"""IR -> ONNX. The only package that imports onnx."""
from ..interrupt import deferred

with deferred():    # a Ctrl-C inside onnx's C-extension initialisation crashes the process (SIGSEGV)
    import onnx  # noqa: F401
from .model import lower, lower_by_reference, serialize, save_model, check_model, check_model_file, DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

__all__ = ["lower", "lower_by_reference", "serialize", "save_model", "check_model", "check_model_file", "DEFAULT_OPSET", "MAX_OPSET", "MIN_OPSET"]
