"""ONNX forms of LSTM and GRU (filled in by the recurrent issue)."""
