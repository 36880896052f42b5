"""Telling a spec from a compiled model before reading it as YAML.

`graphc info model.onnx` used to fail inside the YAML reader ("spec file is not
UTF-8 text" and a screen of binary, or "larger than 1024 KiB"): the user gave the
right file to the wrong command. check, params, info and graph need the spec (the
layers, their names and shapes live there, not in the lowered ONNX graph), so a
compiled model is refused up front with what to run instead."""
from __future__ import annotations

from pathlib import Path

from .errors import GraphcError

MODEL_SUFFIXES = (".onnx", ".ort", ".pb")


def looks_compiled(path: str | Path) -> bool:
    """An .onnx (or other model) name, or a file that starts as an ONNX protobuf
    does: field 1 (ir_version, a varint: byte 0x08) and NUL bytes soon after.
    No YAML text starts with that control character; other binary files keep the
    spec reader's own error ("NUL bytes", "not UTF-8")."""
    p = Path(path)
    if p.suffix.lower() in MODEL_SUFFIXES:
        return True
    import stat
    try:
        if not stat.S_ISREG(p.stat().st_mode):
            return False               # a FIFO or device: reading here would block or consume it
        with open(p, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False                   # the spec reader reports a missing file as it always has
    return head[:1] == b"\x08" and b"\0" in head


def refuse_compiled_model(path: str | Path, command: str) -> None:
    if not looks_compiled(path):
        return
    raise GraphcError(
        f"graphc {command} needs a spec (.yaml); {path} is a compiled model",
        hint=f"give the spec it was built from (graphc {command} SPEC.yaml); for the compiled model use "
             f"'graphc run {path} --random' (its inputs, outputs and their shapes; --bench N to time it)")


# graphc run's options that only a spec's compilation reads: (flag, default)
_COMPILE_ONLY = {"weights": ("--weights", None), "ignore_weights": ("--ignore-weights", []),
                 "opset": ("--opset", None), "include_dir": ("--include-dir", []),
                 "dtype": ("--dtype", "float32"), "quantize": ("--quantize", None),
                 "target": ("--target", "onnx"), "max_error": ("--max-error", None)}


def refuse_compile_flags(args, path: str | Path) -> None:
    """`graphc run model.onnx --quantize int8` ran the float model it was given and
    exited 0: a compile option on a compiled model changes nothing, so it is refused."""
    from .expand import DEFAULT_MAX_PARAM_BYTES
    given = [flag for dest, (flag, default) in _COMPILE_ONLY.items() if getattr(args, dest, default) != default]
    if getattr(args, "max_param_bytes", DEFAULT_MAX_PARAM_BYTES) != DEFAULT_MAX_PARAM_BYTES:
        given.append("--max-param-bytes")
    if given:
        raise GraphcError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} when graphc run compiles "
                          f"a spec; {path} is already compiled",
                          hint="rebuild it with graphc build SPEC ... (these options), or run the spec itself")
