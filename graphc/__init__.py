"""graphc: a declarative model-graph compiler (YAML spec -> checked graph -> ONNX)."""
__version__ = "0.1.0"


def generate(bundle, input_ids=None, src_ids=None, **settings):
    """Decode with a bundle built by ``graphc build SPEC --kv-cache -o DIR``; see
    graphc.generation.api.generate (imported lazily: onnxruntime loads on first use)."""
    from .generation.api import generate as _generate
    return _generate(bundle, input_ids, src_ids, **settings)
