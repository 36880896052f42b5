"""Source loading: YAML text to a tree in which every key and value has a Span."""
from .yaml_loader import Node, load_yaml_file, load_yaml_text, MAX_SPEC_BYTES

__all__ = ["Node", "load_yaml_file", "load_yaml_text", "MAX_SPEC_BYTES"]
