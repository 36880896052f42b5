"""ONNX Runtime sessions and input checking.

Inputs are checked against the model's declared inputs before ORT sees them:
ORT's own messages for a wrong rank or a dim that disagrees between inputs
are terse and do not name the symbolic dim ('batch') that broke.
"""
from __future__ import annotations

import re
import os
import weakref
import zipfile
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import GraphcError
from .value_checks import (check_dim_expressions, dim_names_in, refuse_dims_past_limits,
                           refuse_values_out_of_range, refuse_values_past_limits)

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
              "tensor(int8)": np.int8, "tensor(uint64)": np.uint64, "tensor(uint32)": np.uint32,
              "tensor(uint16)": np.uint16, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# --random inputs are for trying a model out; a typo like --dim seq=1000000000
# must be an error, not an attempt to fill tens of gigabytes with noise
MAX_RANDOM_INPUT_BYTES = 1 << 30
# np.load reads any file it is given; these are the ways a file that is not
# (or no longer) an array fails, besides our own checks
_LOAD_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError)


def _load_error(what: str, model: bytes | str, reason: str) -> GraphcError:
    """ORT's refusal in a user's words. A file that is not protobuf at all (a spec
    without its .yaml suffix, a truncated download) gets "[ONNXRuntimeError] : 7 :
    INVALID_PROTOBUF : Load model from X failed:Protobuf parsing failed." from ORT;
    that is said as what it means, and a spec is recognised by its first key."""
    if "INVALID_PROTOBUF" not in reason:
        return GraphcError(f"ONNX Runtime cannot load {what}: {reason[:300]}")
    head = b""
    if isinstance(model, str):
        try:
            with open(model, "rb") as f:
                head = f.read(4096)
        except OSError:
            pass
    else:
        head = bytes(model[:4096])
    text = b"\0" not in head
    if text and (head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"graphc:") or b"\ngraphc:" in head):
        return GraphcError(f"ONNX Runtime cannot load {what}: it is a graphc spec (YAML text), not a compiled model",
                           hint="graphc run compiles a spec whose name ends in .yaml or .yml; rename it, "
                                "or build it first: graphc build SPEC.yaml -o model.onnx")
    return GraphcError(f"ONNX Runtime cannot load {what}: it is not an ONNX model (a truncated file, or another "
                       f"kind of file)", hint="build it again with graphc build SPEC -o model.onnx")


def make_session(model: bytes | str, provider: str = "cpu", threads: int | None = None,
                 optimized_path: str | None = None, config: Mapping[str, str] | None = None):
    """``config``: ORT session config entries (e.g. session.disable_prepacking)."""
    from ..interrupt import deferred
    with deferred():        # no Ctrl-C inside a C extension's initialisation (see graphc.interrupt)
        import onnxruntime as ort
    if provider not in PROVIDERS:
        raise GraphcError(f"unknown provider '{provider}'", hint="use cpu or cuda")
    available = ort.get_available_providers()
    wanted = PROVIDERS[provider]
    if wanted not in available:
        raise GraphcError(f"the {provider} provider is not available in this onnxruntime "
                          f"(available: {', '.join(available)})",
                          hint="install the GPU build: pip install 'graphc[gpu]' (onnxruntime-gpu) on a machine with CUDA")
    if threads is not None and not 0 <= threads <= MAX_THREADS:
        # ORT would try to start them all: 99999 threads is a hang, not an error
        raise GraphcError(f"--threads must be between 0 and {MAX_THREADS}, got {threads}")
    from .. import process_owner
    if process_owner.cli:                   # process-wide and unreadable: a library call leaves it alone
        ort.set_default_logger_severity(4)  # failures are reported once, by us, not also as ORT log lines
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 4             # fatal only: run_model reports failures itself
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, value)
    providers = [wanted] + (["CPUExecutionProvider"] if wanted != "CPUExecutionProvider" else [])
    try:
        session = ort.InferenceSession(model, sess_options=opts, providers=providers)
    except Exception as exc:  # ORT raises its own exception types for unreadable models
        what = model if isinstance(model, str) else "the model"
        raise _load_error(what, model, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    try:
        _SOURCES[session] = model
    except TypeError:           # pragma: no cover  (a session type without weak references)
        pass
    from ..ir import contract
    contract.read(model_meta(session), model if isinstance(model, str) else "the model")   # refuse a malformed one now
    return session


# the model each session was made from, read again only if a run needs to know its ops
_SOURCES: "weakref.WeakKeyDictionary[object, bytes | str]" = weakref.WeakKeyDictionary()
MAX_THREADS = 1024
# ONNX Runtime 1.31's LSTM/GRU/RNN kernels crash the process (SIGSEGV, abort) on
# an empty batch or sequence instead of returning an error
_CRASH_ON_EMPTY = frozenset({"LSTM", "GRU", "RNN", "Scan", "Loop"})


def _op_types(session) -> set[str] | None:
    try:
        model = _SOURCES.get(session)
    except TypeError:           # pragma: no cover
        model = None
    if model is None:
        return None
    import onnx
    try:
        proto = onnx.load_from_string(model) if isinstance(model, bytes) else \
            onnx.load(model, load_external_data=False)
    except Exception:
        return None
    types = {n.op_type for n in proto.graph.node}
    for fn in proto.functions:
        types.update(n.op_type for n in fn.node)
    return types


def _refuse_empty_inputs_that_crash(session, feeds: Mapping[str, np.ndarray]) -> None:
    empty = [(name, arr.shape) for name, arr in feeds.items() if 0 in arr.shape]
    if not empty:
        return
    types = _op_types(session)
    risky = sorted(_CRASH_ON_EMPTY & types) if types is not None else ["(unknown ops)"]
    if risky:
        name, shape = empty[0]
        raise GraphcError(f"input '{name}' is empty (shape {list(shape)}); this model uses "
                          f"{', '.join(risky)}, which needs at least one batch row and one time step",
                          hint="ONNX Runtime crashes on empty inputs to recurrent ops, so graphc refuses them")


def _refuse_empty_sequences(session, feeds: Mapping[str, np.ndarray]) -> None:
    """A recurrent layer's lengths must be at least 1: torch's packed sequences
    reject 0, and ONNX Runtime's answer for it (a zero state, even when h0 is
    given) is not the recurrence's. The compiler records which inputs are lengths."""
    for name in model_contract(session).sequence_lengths:
        arr = feeds.get(name)
        if arr is None or arr.size == 0 or arr.dtype.kind not in "iu":
            continue
        bad = np.flatnonzero(np.asarray(arr).reshape(-1) < 1)
        if bad.size:
            raise GraphcError(f"input '{name}' gives sequence {int(bad[0])} a length of "
                              f"{int(arr.reshape(-1)[bad[0]])}; every sequence needs at least one step",
                              hint="leave empty sequences out of the batch (torch's pack_padded_sequence "
                                   "refuses them too)")


def model_dims(session) -> set[str]:
    """The names of the symbolic dims in the model's input shapes (those written
    as expressions, 'seq+1', included) and in its recorded example sizes."""
    names = set(model_contract(session).dim_examples)
    for info in session.get_inputs():
        for d in info.shape:
            if isinstance(d, str):
                names.update(dim_names_in(d))
    return names


def model_meta(session) -> dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


def model_contract(session):
    """The model's graphc metadata, validated (graphc.ir.contract)."""
    from ..ir import contract
    return contract.read(model_meta(session))


def check_inputs(session, feeds: Mapping[str, np.ndarray], partial: bool = False) -> dict[str, int]:
    """Check names, dtypes, ranks and dims (symbolic dims must agree across
    inputs); returns the dim values bound by the inputs. ``partial``: inputs
    not given are skipped (the headers of files, before --random adds the rest)."""
    declared = {i.name: i for i in session.get_inputs()}
    for name in feeds:
        if name not in declared:
            raise GraphcError(f"the model has no input '{name}'", hint=f"its inputs: {', '.join(declared)}")
    bound: dict[str, tuple[int, str]] = {}
    for name, info in declared.items():
        if name not in feeds:
            if partial:
                continue
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
    return check_dim_expressions(bound)


def random_inputs(session, dims: Mapping[str, int], seed: int = 0,
                  given: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Random inputs for every model input not in ``given``: floats N(0,1);
    integers in the input's declared range (or [0, 2)), in the input's own
    integer type; booleans mostly False (a few padded positions). Dims are the
    --dim values, else the sizes ``given`` inputs bind (an LSTM's lengths fit
    the x that was given), else the spec's examples."""
    c = model_contract(session)
    examples, ranges = c.dim_examples, c.input_ranges
    bound = check_inputs(session, given, partial=True) if given else {}
    env = {**examples, **bound, **dims}
    rng = np.random.default_rng(seed % (1 << 64))      # any integer seed; the same draws for 0 .. 2**64-1
    feeds = {}
    total = 0
    for info in session.get_inputs():
        if given and info.name in given:
            continue
        shape = [_dim_size(info.name, d, env, axis) for axis, d in enumerate(info.shape)]
        if info.type not in _ORT_TYPES:
            raise GraphcError(f"input '{info.name}' has type {info.type}, for which --random has no values",
                              hint=f"pass it with --input {info.name}=FILE.npy")
        dtype = np.dtype(_ORT_TYPES[info.type])
        count = 1
        for n in shape:
            count *= n
        total += count * dtype.itemsize
        if total > MAX_RANDOM_INPUT_BYTES:
            raise GraphcError(f"random inputs of these sizes would take more than {MAX_RANDOM_INPUT_BYTES >> 20} MiB "
                              f"(input '{info.name}' is {shape})", hint="pass smaller --dim values")
        if dtype.kind == "f":
            arr = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            arr = rng.random(shape) < 0.1
        else:
            lo, hi = (_range_value(v, env) for v in ranges.get(info.name, (0, 2)))
            limits = np.iinfo(dtype)
            if isinstance(lo, int) and isinstance(hi, int) and hi <= lo:
                raise GraphcError(f"input '{info.name}': its range [{lo}, {hi}) is empty at these dims",
                                  hint="pass larger --dim values")
            if not (isinstance(lo, int) and isinstance(hi, int) and limits.min <= lo < hi <= limits.max + 1):
                raise GraphcError(f"input '{info.name}': the range [{lo}, {hi}) does not fit {dtype.name}")
            arr = rng.integers(lo, hi, size=shape).astype(dtype)
        feeds[info.name] = arr
    return feeds


def _dim_size(input_name: str, d, env: Mapping[str, int], axis: int = 0) -> int:
    """The size of one declared axis: a number, a dim name, or an expression
    over dim names as graphc writes it ('seq+1', '2*seq')."""
    if isinstance(d, int) and d >= 0:
        return d
    if d is None or d == "" or (isinstance(d, int) and d < 0):
        # a dynamic axis with no name (another exporter's model): no --dim can name it
        raise GraphcError(f"input '{input_name}' axis {axis} is dynamic and unnamed, so --random cannot size it",
                          hint=f"pass it with --input {input_name}=FILE.npy")
    if isinstance(d, str) and d in env:
        return int(env[d])
    if isinstance(d, str) and d:
        from ..shapes import parse_expr
        try:
            v = parse_expr(d).evaluate(lambda n: env.get(n))
        except GraphcError:
            v = None
        if isinstance(v, int) and v >= 0:
            return v
    raise GraphcError(f"input '{input_name}' has dim '{d}' with no size",
                      hint="pass --dim NAME=N for the dims it uses")


def load_inputs(items: Sequence[str], session=None) -> dict[str, np.ndarray]:
    """--input NAME=FILE.npy and --input FILE.npz (every array in it, by name).
    With ``session``, each array's header is checked against the model's
    inputs before its data is read (graphc.runtime.arrays_io)."""
    from .arrays_io import load_inputs as _load
    check = None
    if session is not None:
        def check(stand_ins):
            dims = check_inputs(session, stand_ins, partial=True)
            refuse_dims_past_limits(model_meta(session), dims)
    return _load(items, check)


def _load_array(path: str, what: str) -> np.ndarray:
    """One .npy file (graphc generate's --prompt-ids), read header first (graphc.runtime.arrays_io)."""
    from .arrays_io import read_npy
    return read_npy(path, what)


def save_outputs(outs: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write outputs to an .npz atomically (graphc.atomic_write.write_atomic), by
    their own names (not numpy.savez's keyword arguments: graphc.runtime.arrays_io)."""
    from ..atomic_write import write_atomic
    from .arrays_io import write_npz
    write_atomic(path, lambda f: write_npz(f, outs))


def _range_value(v, env):
    """A range end: an integer, or an expression over dims stored by the compiler ('seq + 1')."""
    if isinstance(v, str):
        from ..shapes import parse_expr
        try:
            return parse_expr(v).evaluate(lambda n: env.get(n), None, env)
        except GraphcError as exc:
            raise GraphcError(f"cannot evaluate the input range '{v}': {exc.message}",
                              hint="pass the dims it uses with --dim NAME=N") from None
    return v


def run_model(session, feeds: Mapping[str, np.ndarray],
              asked_dims: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Check the inputs (and that they have the sizes ``asked_dims``, the
    user's --dim values, say), then run."""
    dims = check_inputs(session, feeds)
    for name, n in (asked_dims or {}).items():
        if name in dims and dims[name] != n:
            raise GraphcError(f"--dim {name}={n}, but the inputs give {name} = {dims[name]}",
                              hint="drop the --dim, or give inputs of that size")
    _refuse_empty_inputs_that_crash(session, feeds)
    _refuse_empty_sequences(session, feeds)
    meta = model_meta(session)
    refuse_values_out_of_range(meta, feeds, dims)
    refuse_values_past_limits(meta, feeds, dims)
    names = [o.name for o in session.get_outputs()]
    try:
        outs = session.run(names, dict(feeds))
    except Exception as exc:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines()[0][:400]   # ORT colours its log lines
        raise GraphcError(f"ONNX Runtime failed: {text}") from None
    return dict(zip(names, outs))
