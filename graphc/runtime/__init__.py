"""Running compiled models on ONNX Runtime, with inputs checked first."""
from .session import make_session, check_inputs, random_inputs, run_model, model_meta, load_inputs, save_outputs

__all__ = ["make_session", "check_inputs", "random_inputs", "run_model", "model_meta", "load_inputs",
           "save_outputs"]
