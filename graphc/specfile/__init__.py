"""Spec format v1: located YAML tree -> validated Spec objects.

(Named specfile, not spec: specs/ holds the example specs, and tools that follow
the RSpec convention take a spec/ directory for tests.)
"""
from .model import Spec, LayerDecl, BlockDecl, InputDecl, DimDecl, InputRef
from .includes import load_spec
from .parse import parse_spec_text, FORMAT_VERSION

__all__ = ["Spec", "LayerDecl", "BlockDecl", "InputDecl", "DimDecl", "InputRef",
           "load_spec", "parse_spec_text", "FORMAT_VERSION"]
