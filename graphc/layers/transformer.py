"""Transformer encoder/decoder layers, stacks and whole models."""
KINDS = ()
