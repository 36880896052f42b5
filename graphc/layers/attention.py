"""Scaled dot-product and multi-head attention, with masks."""
KINDS = ()
