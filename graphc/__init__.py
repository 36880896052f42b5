"""graphc: a declarative model-graph compiler (YAML spec -> checked graph -> ONNX).

The Python API (docs/python.md), the same work as the ``graphc`` command:

    import graphc
    model = graphc.compile_spec("model.yaml", weights="model.safetensors")   # -> graphc.Compiled
    model.save("model.onnx")            # written atomically; or model.to_bytes()
    spec, graph = graphc.check_spec("model.yaml")  # graphc check: shapes, no weights
    graphc.build_bundle("gpt.yaml", "bundle")      # graphc build --kv-cache: a generation bundle
    ids = graphc.generate("bundle", [[5, 9, 13]], max_new_tokens=20)
    gen = graphc.Generator("bundle")    # sessions loaded once; generate() from many threads

``weights`` is a path (.safetensors, .npz, a checkpoint directory or a sharded
index) or a dict of numpy arrays named like the torch state_dict; without it the
parameters are drawn from ``seed``. Every mistake a user can make is raised as
``graphc.GraphcError`` (``.message``, ``.hint``, ``.span``; ``str()`` is what the
CLI prints); nothing is printed, and notes and warnings are returned
(``Compiled.notes``, ``Compiled.graph.warnings``, ``build_bundle(...)["notes"]``).

The names are imported on first use, so ``import graphc`` loads neither numpy
nor onnx nor onnxruntime.
"""
from .errors import GraphcError

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily, see __getattr__)
_LAZY = {
    "compile_spec": "graphc.compiler",
    "check_spec": "graphc.compiler",
    "Compiled": "graphc.compiler",
    "build_bundle": "graphc.generation.bundle_write",
    "generate": "graphc.generation.api",
    "Generator": "graphc.generation.api",
}
__all__ = ["GraphcError", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'graphc' has no attribute '{name}'")
    import importlib
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value            # the next access is a plain attribute
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
