"""Reading a generation bundle's ``graphc_generation.json``.

The config is data from a directory the user points at, possibly written by
someone else: every field is type- and range-checked here, once, so the
decoding loop can trust it, and a malformed file is a GraphcError naming the
file and the field (never a KeyError or TypeError traceback). File names in the
config must be plain names inside the bundle directory (no ``..``, no absolute
paths), so a crafted config cannot make graphc read files elsewhere.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import GraphcError

CONFIG_NAME = "graphc_generation.json"
MAX_CONFIG_BYTES = 1 << 20
_HINT_BUILD = "build one with: graphc build SPEC --kv-cache -o DIR"
ENCODER_ROLES = ("source_ids", "source_padding_mask", "source_keep_mask", "source_attention_mask",
                 "source_lengths")


@dataclass(frozen=True)
class CacheEntry:
    """One causal self-attention's cache: input and output names and its [kv_heads, head_dim]."""

    past_key: str
    past_value: str
    present_key: str
    present_value: str
    kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class Encoder:
    path: Path
    inputs: dict          # onnx input name -> role (one of ENCODER_ROLES)
    outputs: tuple        # names, each also a decoder input


@dataclass(frozen=True)
class Bundle:
    """A validated bundle. ``eos`` is always a tuple (empty when the model has none)."""

    directory: Path
    architecture: str                 # "decoder-only" | "encoder-decoder"
    dtype: str
    bos: int | None
    eos: tuple
    pad: int
    decoder_start: int | None
    vocab_size: int
    max_positions: int | None
    logits_kind: str                  # "logits" | "log_probs"
    decoder: Path
    encoder: Encoder | None
    cache: tuple                      # of CacheEntry
    spec: str
    raw: dict
    cache_layout: str = "concat"      # "concat" | "shared" (graphc.prims.shared_cache)

    @property
    def encoder_decoder(self) -> bool:
        return self.architecture == "encoder-decoder"


def _fail(path: Path, what: str, hint: str | None = None):
    raise GraphcError(f"{path}: {what}", hint=hint)


def _int(cfg: dict, key: str, path: Path, *, optional: bool = False, low: int | None = None,
         high: int | None = None):
    if key not in cfg or cfg[key] is None:
        if optional:
            return None
        _fail(path, f"'{key}' is missing or null")
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, int):
        _fail(path, f"'{key}' must be an integer, got {json.dumps(v)[:60]}")
    if low is not None and v < low or high is not None and v > high:
        _fail(path, f"'{key}' = {v} is outside [{low}, {high if high is not None else '...'}]")
    return v


def _name(v, key: str, path: Path) -> str:
    if not isinstance(v, str) or not v:
        _fail(path, f"'{key}' must be a non-empty string, got {json.dumps(v)[:60]}")
    return v


def _file_in(directory: Path, v, key: str, path: Path) -> Path:
    name = _name(v, key, path)
    if os.path.isabs(name) or os.sep in name or "/" in name or name in (".", ".."):
        _fail(path, f"'{key}' must name a file inside the bundle directory, got '{name}'")
    f = directory / name
    if not f.is_file():
        _fail(path, f"'{key}' names {name}, which is not in {directory}", hint=_HINT_BUILD)
    return f


def read_config(directory: str | os.PathLike) -> dict:
    """The parsed JSON of DIR/graphc_generation.json, or a GraphcError saying why not."""
    d = Path(directory)
    if d.is_file() and d.suffix.lower() == ".onnx":
        raise GraphcError(f"{d} is a plain .onnx model, not a generation bundle",
                          hint="build a bundle directory with: graphc build SPEC --kv-cache -o DIR")
    if not d.is_dir():
        what = "is a file, not a bundle directory" if d.exists() else "no such directory"
        raise GraphcError(f"{d}: {what}", hint=_HINT_BUILD)
    path = d / CONFIG_NAME
    if not path.is_file():
        raise GraphcError(f"{d} is not a generation bundle (no {CONFIG_NAME}); build with --kv-cache",
                          hint=_HINT_BUILD)
    with open(path, "rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        _fail(path, f"larger than {MAX_CONFIG_BYTES} bytes; not a config graphc wrote")
    try:
        cfg = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        _fail(path, f"not valid JSON: {exc}", hint="rebuild the bundle with graphc build --kv-cache")
    if not isinstance(cfg, dict):
        _fail(path, "the config must be a JSON object")
    return cfg


def load_bundle(directory: str | os.PathLike) -> Bundle:
    d = Path(directory)
    cfg = read_config(d)
    path = d / CONFIG_NAME
    if cfg.get("format") != 1:
        _fail(path, f"unsupported format {json.dumps(cfg.get('format'))[:20]} (this graphc reads format 1)",
              hint="rebuild the bundle with this graphc")
    arch = cfg.get("architecture")
    if arch not in ("decoder-only", "encoder-decoder"):
        _fail(path, f"'architecture' must be \"decoder-only\" or \"encoder-decoder\", got {json.dumps(arch)[:40]}")
    dtype = cfg.get("dtype", "float32")
    if dtype not in ("float32", "float16"):
        _fail(path, f"'dtype' must be float32 or float16, got {json.dumps(dtype)[:40]}")
    kind = cfg.get("logits_kind", "logits")
    if kind not in ("logits", "log_probs"):
        _fail(path, f"'logits_kind' must be \"logits\" or \"log_probs\", got {json.dumps(kind)[:40]}")
    vocab = _int(cfg, "vocab_size", path, low=1, high=1 << 31)
    top = vocab - 1
    bos = _int(cfg, "bos", path, optional=True, low=0, high=top)
    pad = _int(cfg, "pad", path, low=0, high=top)
    eos_raw = cfg.get("eos")
    if eos_raw is None:
        eos = ()
    else:
        items = eos_raw if isinstance(eos_raw, list) else [eos_raw]
        if not items or len(items) > 64:
            _fail(path, "'eos' must be an id or a list of 1 to 64 ids")
        eos = tuple(_int({"eos": e}, "eos", path, low=0, high=top) for e in items)
    start = _int(cfg, "decoder_start", path, optional=True, low=0, high=top)
    max_pos = _int(cfg, "max_positions", path, optional=True, low=1, high=1 << 40)
    dec = cfg.get("decoder")
    if not isinstance(dec, dict):
        _fail(path, "'decoder' must be an object like {\"file\": \"decoder.onnx\"}")
    decoder = _file_in(d, dec.get("file"), "decoder.file", path)
    encoder = None
    enc = cfg.get("encoder")
    if arch == "encoder-decoder":
        if not isinstance(enc, dict):
            _fail(path, "an encoder-decoder bundle needs an 'encoder' object")
        efile = _file_in(d, enc.get("file"), "encoder.file", path)
        ins = enc.get("inputs")
        if not isinstance(ins, dict) or not ins:
            _fail(path, "'encoder.inputs' must map the encoder's input names to roles")
        for k, role in ins.items():
            _name(k, "encoder.inputs", path)
            if role not in ENCODER_ROLES:
                _fail(path, f"encoder input '{k}' has role {json.dumps(role)[:40]}; "
                            f"expected one of {', '.join(ENCODER_ROLES)}")
        if "source_ids" not in ins.values():
            _fail(path, "no encoder input has the role 'source_ids'")
        outs = enc.get("outputs")
        if not isinstance(outs, list) or not outs:
            _fail(path, "'encoder.outputs' must be a non-empty list of names")
        encoder = Encoder(efile, dict(ins), tuple(_name(o, "encoder.outputs", path) for o in outs))
        if start is None:
            start = bos
        if start is None:
            _fail(path, "an encoder-decoder bundle needs 'decoder_start' (or 'bos')")
    elif enc is not None:
        _fail(path, "a decoder-only bundle must have \"encoder\": null")
    cache_raw = cfg.get("cache")
    if not isinstance(cache_raw, list) or not cache_raw or len(cache_raw) > 4096:
        _fail(path, "'cache' must be a non-empty list (one entry per causal self-attention)",
              hint="a model without a KV cache cannot be used by generate; " + _HINT_BUILD)
    cache = []
    for i, c in enumerate(cache_raw):
        if not isinstance(c, dict):
            _fail(path, f"cache[{i}] must be an object")
        names = [_name(c.get(k), f"cache[{i}].{k}", path)
                 for k in ("past_key", "past_value", "present_key", "present_value")]
        cache.append(CacheEntry(*names, _int(c, "kv_heads", path, low=1, high=1 << 16),
                                _int(c, "head_dim", path, low=1, high=1 << 16)))
    spec = cfg.get("spec", "")
    layout = cfg.get("cache_layout", "concat")
    if layout not in ("concat", "shared"):
        _fail(path, f"'cache_layout' must be \"concat\" or \"shared\", got {layout!r}")
    return Bundle(d, arch, dtype, bos, eos, pad, start, vocab, max_pos, kind, decoder, encoder, tuple(cache),
                  spec if isinstance(spec, str) else "", cfg, layout)
