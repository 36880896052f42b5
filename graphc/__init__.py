"""graphc: a declarative model-graph compiler (YAML spec -> checked graph -> ONNX)."""
__version__ = "0.1.0"
