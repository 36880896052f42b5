"""ONNX forms of the attention core (filled in by the attention issue)."""
