"""LSTM and GRU primitives (filled in by the recurrent issue)."""
