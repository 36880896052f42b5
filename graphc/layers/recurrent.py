"""LSTM and GRU layers and cells (see issue: recurrent layers)."""
KINDS = ()
