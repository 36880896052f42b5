"""Checkpoints as ``--weights``: one file, a directory as Hugging Face's
``save_pretrained`` writes it, or a sharded checkpoint's index.

Why a module of its own: graphc.weight_files reads single files strictly; a
checkpoint adds the directory conventions (``model.safetensors``, or
``model.safetensors.index.json`` naming shard files) and the notes a user must
see when tensors change type on the way in (bfloat16, float16 and float64
become the parameters' float32: said, never silent).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from .errors import GraphcError
from .json_files import read_json
from .weight_files import load_weights, read_safetensors

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
MAX_INDEX_BYTES = 64 << 20       # real indexes are tens of kilobytes
# what a directory may hold instead, and what to do about it
_OTHER_FORMATS = {
    "pytorch_model.bin": "re-save it with save_pretrained(dir, safe_serialization=True) "
                         "(graphc reads safetensors, never pickles)",
    "pytorch_model.bin.index.json": "re-save it with save_pretrained(dir, safe_serialization=True)",
    "tf_model.h5": "load it in transformers and re-save with save_pretrained(dir) (safetensors)",
    "flax_model.msgpack": "load it in transformers and re-save with save_pretrained(dir) (safetensors)",
}


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def present(path: Path) -> bool:
    """Whether a checkpoint file is there; a dangling symlink is an error, not
    absence: a Hugging Face cache snapshot links each file to a blob, and a copy
    made without its blobs (or a download cut short) leaves links to nothing,
    which must not read as "this directory has no weights"."""
    if path.exists():
        return True
    if path.is_symlink():
        raise GraphcError(f"{path} is a symbolic link to {os.readlink(path)}, which does not exist",
                          hint="a Hugging Face cache snapshot copied without its blobs, or a download cut short: "
                               "copy it with 'cp -rL' (following links), or download it again")
    return False


def load_checkpoint(path: str | os.PathLike, max_bytes: int | None = None,
                    raw_bf16: bool = False) -> tuple[dict[str, np.ndarray], list[str]]:
    """The tensors of a weights file, checkpoint directory or index file, and
    notes for the user (conversions). ``max_bytes`` bounds all shards together.
    ``raw_bf16``: bfloat16 tensors stay mapped uint16 bits (graphc.weight_files)."""
    p = Path(path)
    converted: dict[str, str] = {}
    if is_checkpoint_dir(p):
        if present(p / SINGLE):
            tensors = read_safetensors(p / SINGLE, max_bytes, converted, raw_bf16)
        elif present(p / INDEX):
            tensors = read_index(p / INDEX, max_bytes, converted, raw_bf16)
        else:
            raise _no_weights_in(p)
    elif p.name.endswith(".index.json"):
        tensors = read_index(p, max_bytes, converted, raw_bf16)
    elif p.suffix.lower() == ".safetensors":
        # load_weights checks the path (missing, a FIFO ...) and then calls the same reader
        tensors = (load_weights(p, max_bytes) if not p.is_file()
                   else read_safetensors(p, max_bytes, converted, raw_bf16))
    else:
        tensors = load_weights(p, max_bytes)
    return tensors, conversion_notes(tensors, converted, str(path))


def conversion_notes(tensors: dict[str, np.ndarray], converted: dict[str, str], source: str) -> list[str]:
    """One note per source dtype that is not float32: the tensors become float32
    parameters (bfloat16 exactly, float16 exactly, float64 rounded)."""
    counts: dict[str, list[str]] = {}
    for name, why in converted.items():
        counts.setdefault(why, []).append(name)
    for name, arr in tensors.items():
        if arr.dtype in (np.float16, np.float64):
            counts.setdefault(str(arr.dtype), []).append(name)
    notes = []
    for dtype in sorted(counts):
        names = sorted(counts[dtype])
        how = "rounded" if dtype == "float64" else "exactly"
        notes.append(f"{len(names)} {dtype} tensor{'s' if len(names) > 1 else ''} in {source} "
                     f"converted to float32 ({how}), e.g. '{names[0]}'")
    return notes


def _no_weights_in(p: Path) -> GraphcError:
    for name, what in _OTHER_FORMATS.items():
        if (p / name).exists():
            return GraphcError(f"checkpoint directory {p} holds {name}, not {SINGLE}", hint=what)
    found = sorted(f.name for f in p.iterdir() if f.suffix in (".safetensors", ".npz"))[:5]
    if found:
        return GraphcError(f"checkpoint directory {p} has no {SINGLE} or {INDEX}",
                           hint=f"pass one of its files as --weights: {', '.join(found)}")
    return GraphcError(f"checkpoint directory {p} has no {SINGLE} or {INDEX}",
                       hint="a checkpoint directory is what save_pretrained writes: config.json and model.safetensors")


def read_index(path: Path, max_bytes: int | None = None, converted: dict[str, str] | None = None,
               raw_bf16: bool = False) -> dict[str, np.ndarray]:
    """A sharded checkpoint: ``{"weight_map": {tensor: shard file}}`` next to its
    shards. Every shard named must exist (beside the index, no other directory),
    hold the tensors the index assigns to it, and nothing else."""
    shown = str(path)
    index = read_json(path, MAX_INDEX_BYTES, "checkpoint index")
    wmap = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
        raise GraphcError(f"{shown}: no 'weight_map' mapping tensor names to shard files",
                          hint="an index written by save_pretrained has {\"metadata\": ..., \"weight_map\": {...}}")
    shards: dict[str, list[str]] = {}
    for name, shard in wmap.items():
        shards.setdefault(shard, []).append(name)
    for shard in shards:
        if Path(shard).name != shard or shard in (".", ".."):
            raise GraphcError(f"{shown}: shard '{shard}' is not a file name beside the index",
                              hint="an index names its shards by file name, in its own directory")
        if not present(path.parent / shard):
            raise GraphcError(f"{shown} names shard '{shard}' (for {len(shards[shard])} tensors, e.g. "
                              f"'{shards[shard][0]}'), which is not in {path.parent}",
                              hint="copy every shard of the checkpoint next to its index")
    out: dict[str, np.ndarray] = {}
    left = max_bytes
    for shard in sorted(shards):
        tensors = read_safetensors(path.parent / shard, left, converted, raw_bf16)
        want = set(shards[shard])
        absent = sorted(want - tensors.keys())
        if absent:
            raise GraphcError(f"{shown} puts tensor '{absent[0]}' in shard '{shard}', which does not hold it"
                              + (f" ({len(absent)} such tensors)" if len(absent) > 1 else ""),
                              hint="the index and its shards come from different saves; save the checkpoint again")
        unlisted = sorted(tensors.keys() - want)
        if unlisted:
            raise GraphcError(f"shard '{shard}' holds tensor '{unlisted[0]}', which {shown} does not list"
                              + (f" ({len(unlisted)} such tensors)" if len(unlisted) > 1 else ""),
                              hint="the index and its shards come from different saves; save the checkpoint again")
        out.update(tensors)
        if left is not None:
            left -= sum(a.nbytes for a in tensors.values())
    return out


def checkpoint_files(path: str | os.PathLike) -> list[Path]:
    """The files a weights path stands for: itself, or for a checkpoint
    directory or index the files graphc reads there (config, weights, index and
    the shards it names). An output path must be none of them: writing a model
    over ``DIR/model.safetensors`` would destroy the checkpoint it came from.
    Best effort: an unreadable index adds no shards (loading it reports that)."""
    p = Path(path)
    if is_checkpoint_dir(p):
        files = [p / SINGLE, p / INDEX, p / "config.json", p / "generation_config.json"]
        index = p / INDEX
    else:
        files = [p]
        index = p if p.name.endswith(".index.json") else None
    if index is not None:
        try:
            wmap = read_json(index, MAX_INDEX_BYTES, "checkpoint index").get("weight_map")
            files += [index.parent / Path(str(s)).name for s in set(wmap.values())]
        except (GraphcError, AttributeError, TypeError):
            pass
    return files
