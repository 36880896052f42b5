"""Positional encodings and feed-forward blocks."""
KINDS = ()
