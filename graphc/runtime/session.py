"""ONNX Runtime sessions and input checking.

Inputs are checked against the model's declared inputs before ORT sees them:
ORT's own messages for a wrong rank or a dim that disagrees between inputs
are terse and do not name the symbolic dim ('batch') that broke.
"""
from __future__ import annotations

import json
from typing import Mapping

import numpy as np

from ..errors import GraphcError

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def make_session(model: bytes | str, provider: str = "cpu", threads: int | None = None,
                 optimized_path: str | None = None):
    import onnxruntime as ort
    if provider not in PROVIDERS:
        raise GraphcError(f"unknown provider '{provider}'", hint="use cpu or cuda")
    available = ort.get_available_providers()
    wanted = PROVIDERS[provider]
    if wanted not in available:
        raise GraphcError(f"the {provider} provider is not available in this onnxruntime "
                          f"(available: {', '.join(available)})",
                          hint="install the GPU build: pip install 'graphc[gpu]' (onnxruntime-gpu) on a machine with CUDA")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    providers = [wanted] + (["CPUExecutionProvider"] if wanted != "CPUExecutionProvider" else [])
    try:
        return ort.InferenceSession(model, sess_options=opts, providers=providers)
    except Exception as exc:  # ORT raises its own exception types for unreadable models
        what = model if isinstance(model, str) else "the model"
        raise GraphcError(f"ONNX Runtime cannot load {what}: {str(exc).splitlines()[0][:300]}") from None


def model_meta(session) -> dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


def check_inputs(session, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Check names, dtypes, ranks and dims (symbolic dims must agree across
    inputs); returns the dim values bound by the inputs."""
    declared = {i.name: i for i in session.get_inputs()}
    for name in feeds:
        if name not in declared:
            raise GraphcError(f"the model has no input '{name}'", hint=f"its inputs: {', '.join(declared)}")
    bound: dict[str, tuple[int, str]] = {}
    for name, info in declared.items():
        if name not in feeds:
            raise GraphcError(f"input '{name}' is missing", hint=f"pass --input {name}=FILE.npy or --random")
        arr = feeds[name]
        want = _ORT_TYPES.get(info.type)
        if want is not None and arr.dtype != want:
            raise GraphcError(f"input '{name}' has dtype {arr.dtype}, the model expects {np.dtype(want).name}")
        if arr.ndim != len(info.shape):
            raise GraphcError(f"input '{name}' has rank {arr.ndim} (shape {list(arr.shape)}), "
                              f"the model expects rank {len(info.shape)} {info.shape}")
        for axis, (d, n) in enumerate(zip(info.shape, arr.shape)):
            if isinstance(d, int):
                if d != n:
                    raise GraphcError(f"input '{name}' axis {axis} has size {n}, the model expects {d} "
                                      f"(shape {list(arr.shape)} vs {info.shape})")
            elif isinstance(d, str) and d:
                if d in bound and bound[d][0] != n:
                    raise GraphcError(f"dim '{d}' is {bound[d][0]} in input '{bound[d][1]}' but {n} in input '{name}'",
                                      hint=f"every input must agree on '{d}'")
                bound.setdefault(d, (n, name))
                if n == 0 and arr.dtype.kind == "f":
                    pass
    return {k: v for k, (v, _) in bound.items()}


def random_inputs(session, dims: Mapping[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for every model input: floats N(0,1); integers in the
    input's declared range (or [0, the first symbolic dim it has]); booleans
    mostly False (a few padded positions)."""
    meta = model_meta(session)
    examples = json.loads(meta.get("graphc.dim_examples", "{}"))
    ranges = json.loads(meta.get("graphc.input_ranges", "{}"))
    env = {**examples, **dims}
    rng = np.random.default_rng(seed)
    feeds = {}
    for info in session.get_inputs():
        shape = []
        for d in info.shape:
            if isinstance(d, int):
                shape.append(d)
            elif d in env:
                shape.append(int(env[d]))
            else:
                raise GraphcError(f"input '{info.name}' has dim '{d}' with no size",
                                  hint=f"pass --dim {d}=N")
        dtype = _ORT_TYPES.get(info.type, np.float32)
        if np.dtype(dtype).kind == "f":
            arr = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            arr = rng.random(shape) < 0.1
        else:
            lo, hi = ranges.get(info.name, (0, 2))
            arr = rng.integers(lo, hi, size=shape).astype(dtype)
        feeds[info.name] = arr
    return feeds


def run_model(session, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    check_inputs(session, feeds)
    names = [o.name for o in session.get_outputs()]
    try:
        outs = session.run(names, dict(feeds))
    except Exception as exc:
        raise GraphcError(f"ONNX Runtime failed: {str(exc).splitlines()[0][:400]}") from None
    return dict(zip(names, outs))
