"""What every family importer shares: reading config.json as save_pretrained
writes it, refusing what graphc cannot reproduce (by name, with what is
missing), and writing YAML text a person can read.

Why text and not a YAML dump: the spec is the user's to read and edit, so it
carries comments that say which config key each number came from and why a
rule of the weight map transposes or concatenates.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import GraphcError
from ..json_files import read_json

MAX_CONFIG_BYTES = 4 << 20
_UNSET = object()


class Config:
    """config.json of a checkpoint: typed lookups whose failures name the key."""

    def __init__(self, data: dict, path: Path, directory: Path):
        self.data = data
        self.path = path
        self.dir = directory
        self.model_type = data.get("model_type")
        self.tensors: dict = {}      # the checkpoint's tensors, once tensor_names read them

    def get(self, key: str, default: Any = None) -> Any:
        value = self.data.get(key, default)
        return default if value is None and default is not None else value

    def int(self, key: str, default: Any = _UNSET, alt: str | None = None) -> int:
        value = self.data.get(key)
        if value is None and alt is not None:
            value = self.data.get(alt)
        if value is None:
            if default is _UNSET:
                raise GraphcError(f"{self.path}: '{key}' is missing, and a {self.model_type} model needs it")
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise GraphcError(f"{self.path}: '{key}' must be a non-negative integer, got {value!r}")
        return value

    def float(self, key: str, default: Any = _UNSET) -> float:
        value = self.data.get(key)
        if value is None:
            if default is _UNSET:
                raise GraphcError(f"{self.path}: '{key}' is missing, and a {self.model_type} model needs it")
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise GraphcError(f"{self.path}: '{key}' must be a number, got {value!r}")
        return float(value)

    def unsupported(self, key: str, value: Any, missing: str, hint: str | None = None) -> GraphcError:
        return GraphcError(f"{self.path}: {self.model_type} with {key} = {json.dumps(value)} is not supported: "
                           f"graphc lacks {missing}", hint=hint)

    def expect(self, key: str, allowed: tuple, missing: str, default: Any = None) -> Any:
        """The value of ``key`` (``default`` when absent), which must be one of ``allowed``."""
        value = self.data.get(key, default)
        if value is None:
            value = default
        if value not in allowed:
            raise self.unsupported(key, value, missing,
                                   hint="supported: " + ", ".join(json.dumps(a) for a in allowed))
        return value


def read_config(directory: str | Path) -> Config:
    d = Path(directory)
    if not d.is_dir():
        if d.name == "config.json" and d.is_file():
            d = d.parent
        elif not d.exists():
            raise GraphcError(f"checkpoint directory not found: {directory}")
        else:
            raise GraphcError(f"{directory} is not a checkpoint directory",
                              hint="pass the directory save_pretrained wrote (config.json, model.safetensors)")
    path = d / "config.json"
    from ..checkpoint import present
    if present(path) and not path.is_file():
        raise GraphcError(f"{path} is not a file", hint="pass the directory save_pretrained wrote")
    if not path.is_file():
        raise GraphcError(f"{d} has no config.json", hint="pass the directory save_pretrained wrote")
    data = read_json(path, MAX_CONFIG_BYTES, "model config")
    if not isinstance(data, dict):
        raise GraphcError(f"{path}: not a JSON object")
    if not isinstance(data.get("model_type"), str):
        raise GraphcError(f"{path}: no 'model_type'", hint="config.json as transformers' save_pretrained writes it "
                          "names the model family in 'model_type'")
    return Config(data, path, d)


def tensor_names(cfg: Config) -> dict[str, tuple[int, ...]] | None:
    """The checkpoint's tensor names and shapes, or None when the directory holds
    only a config (the spec is then written from the config alone)."""
    from ..checkpoint import INDEX, SINGLE, load_checkpoint, present
    if not present(cfg.dir / SINGLE) and not present(cfg.dir / INDEX):
        return None
    # mapped, read only where compared; bfloat16 as its bits (an import converts nothing)
    cfg.tensors, _ = load_checkpoint(cfg.dir, None, raw_bf16=True)
    return {n: tuple(a.shape) for n, a in cfg.tensors.items()}


def stored_untied(cfg: Config, copy: str, source: str) -> bool:
    """Whether the file holds ``copy`` (a head tied to ``source`` by
    tie_word_embeddings) with other values than ``source``. transformers 5 then
    does not tie them ("both are present in the checkpoints with different
    values, so we will NOT tie them") and the head uses its own tensor; so must
    the spec, or its logits would differ silently."""
    t = cfg.tensors
    if copy not in t or source not in t:
        return False
    import numpy as np
    a, b = t[copy], t[source]
    return a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b)


def prefix_of(names: dict | None, probe: str, candidates: tuple[str, ...]) -> str:
    """Which of ``candidates`` (e.g. 'transformer.', '') the checkpoint's names
    carry before ``probe``: a bare base model saves without its head's prefix."""
    if names is None:
        return candidates[0]
    for c in candidates:
        if c + probe in names:
            return c
    others = ", ".join(f"'{c}{probe}'" for c in candidates[1:])
    raise GraphcError(f"the checkpoint has no tensor '{candidates[0]}{probe}'" + (f" (nor {others})" if others else ""),
                      hint="the tensors do not follow the naming of this model_type; was config.json edited?")


def yfloat(x: float) -> str:
    """A float PyYAML reads as a float (it wants a '.' before an exponent)."""
    text = repr(float(x))
    if "e" in text and "." not in text.split("e")[0]:
        mant, exp = text.split("e")
        text = f"{mant}.0e{exp}"
    return text


def q(text: str) -> str:
    """A single-quoted YAML scalar (patterns hold '{', '*')."""
    return "'" + text.replace("'", "''") + "'"


def rule(frm: str | list[str], to: str, transpose: bool = False, comment: str = "") -> str:
    src = q(frm) if isinstance(frm, str) else "[" + ", ".join(q(f) for f in frm) + "]"
    extra = ", transpose: true" if transpose else ""
    line = f"    - {{from: {src}, to: {q(to)}{extra}}}"
    return line + (f"   # {comment}" if comment else "")
