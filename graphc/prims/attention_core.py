"""Scaled dot-product attention core (filled in by the attention issue)."""
