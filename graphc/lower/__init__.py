"""IR -> ONNX. The only package that imports onnx (a build loads only onnx's
protobuf classes, see graphc.lower.proto; the checker imports the rest)."""
from ..interrupt import deferred

with deferred():    # a Ctrl-C inside a C extension's initialisation (protobuf's here) crashes the process
    from . import proto  # noqa: F401
from .model import lower, lower_by_reference, serialize, save_model, check_model, check_model_file, DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

__all__ = ["lower", "lower_by_reference", "serialize", "save_model", "check_model", "check_model_file", "DEFAULT_OPSET", "MAX_OPSET", "MIN_OPSET"]
