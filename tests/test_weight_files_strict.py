"""Weight files that are malformed in ways a lenient reader would let through
(or crash on): duplicate tensors in an .npz, overlapping or holey safetensors
data, duplicate header keys, a non-map ``__metadata__``, absurd numbers and
shapes, and paths that are not regular files. Each is exit code 2 with a clear
message naming what is wrong, no traceback, and no output written."""
from __future__ import annotations

import io
import json
import os
import signal
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from helpers import cli, user_error
from graphc.weight_files import read_npz, read_safetensors

SPEC = """graphc: 1
dims: {batch: 2}
inputs:
  x: {dtype: float32, shape: [batch, 4]}
layers:
  - {name: fc, kind: linear, input: x, out_features: 3}
outputs: {y: fc}
"""

WEIGHT = np.arange(12, dtype=np.float32).reshape(3, 4)
BIAS = np.zeros(3, np.float32)
DATA = WEIGHT.tobytes() + BIAS.tobytes()




@pytest.fixture
def spec(tmp_path):
    (p := tmp_path / "tiny.yaml").write_text(SPEC)
    return p


def build_fails(spec: Path, weights: Path, *messages: str) -> str:
    out = spec.parent / "out.onnx"
    err = user_error(cli("build", spec, "-o", out, "--weights", weights), messages)
    assert not out.exists()
    assert not [p for p in spec.parent.iterdir() if p.name.startswith(".graphc-")]
    return err


def header(**overrides) -> dict:
    h = {"fc.weight": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]},
         "fc.bias": {"dtype": "F32", "shape": [3], "data_offsets": [48, 60]}}
    h.update(overrides)
    return h


def safetensors(path: Path, head: dict | bytes, data: bytes = DATA) -> Path:
    raw = head if isinstance(head, bytes) else json.dumps(head).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def npy(arr: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.save(b, arr)
    return b.getvalue()


def test_well_formed_files_still_load(spec, tmp_path):
    from safetensors.numpy import save
    (s := tmp_path / "w.safetensors").write_bytes(save({"fc.weight": WEIGHT, "fc.bias": BIAS},
                                                       metadata={"format": "pt"}))
    np.savez(z := tmp_path / "w.npz", **{"fc.weight": WEIGHT, "fc.bias": BIAS})
    np.savez_compressed(c := tmp_path / "c.npz", **{"fc.weight": WEIGHT, "fc.bias": BIAS})
    h = safetensors(tmp_path / "h.safetensors", header(__metadata__={"a": "b"}))
    for w in (s, z, c, h):
        rc, _, err = cli("build", spec, "-o", tmp_path / "o.onnx", "--weights", w)
        assert rc == 0, err
    assert read_safetensors(h)["fc.weight"].tolist() == WEIGHT.tolist()


# ------------------------------------------------------------------ .npz

@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_npz_with_a_tensor_twice_is_refused(spec, tmp_path, compression):
    p = tmp_path / "w.npz"
    with warnings.catch_warnings(), zipfile.ZipFile(p, "w", compression) as zf:
        warnings.simplefilter("ignore")                         # zipfile warns "Duplicate name"
        zf.writestr("fc.weight.npy", npy(WEIGHT))
        zf.writestr("fc.bias.npy", npy(BIAS))
        zf.writestr("fc.weight.npy", npy(WEIGHT * 2))
    build_fails(spec, p, "tensor 'fc.weight' appears twice")


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_npz_member_with_a_negative_shape_is_refused(spec, tmp_path, compression):
    """A -1 in a stored member's shape made numpy map the rest of the file as the tensor."""
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False, "shape": (-1,)})
    p = tmp_path / "w.npz"
    with zipfile.ZipFile(p, "w", compression) as zf:
        zf.writestr("fc.bias.npy", head.getvalue() + BIAS.tobytes())
        zf.writestr("fc.weight.npy", npy(WEIGHT))
    build_fails(spec, p, "tensor 'fc.bias' has an invalid shape (-1,)")


# ------------------------------------------------------------------ .safetensors layout

def test_overlapping_tensors_are_refused(spec, tmp_path):
    p = safetensors(tmp_path / "w.safetensors",
                    header(**{"fc.bias": {"dtype": "F32", "shape": [3], "data_offsets": [36, 48]}}), DATA[:48])
    build_fails(spec, p, "tensors 'fc.weight' (bytes 0-48) and 'fc.bias' (bytes 36-48) overlap")


def test_two_tensors_on_the_same_bytes_are_refused(spec, tmp_path):
    h = {"fc.weight": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]},
         "fc.bias": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
         "fc.other": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}}
    p = safetensors(tmp_path / "w.safetensors", h, DATA[:48])
    err = build_fails(spec, p, "overlap in the data section")
    assert "'fc.bias'" in err and "'fc.other'" in err


def test_a_hole_between_tensors_is_refused(spec, tmp_path):
    p = safetensors(tmp_path / "w.safetensors",
                    header(**{"fc.bias": {"dtype": "F32", "shape": [3], "data_offsets": [52, 64]}}),
                    DATA[:48] + b"\0" * 4 + DATA[48:])
    build_fails(spec, p, "bytes 48-52 of the data section", "between tensor 'fc.weight' and tensor 'fc.bias'",
                "belong to no tensor")


def test_bytes_after_the_last_tensor_are_refused(spec, tmp_path):
    p = safetensors(tmp_path / "w.safetensors", header(), DATA + b"hidden")
    build_fails(spec, p, "6 bytes at the end of the data section, after tensor 'fc.bias'")


def test_a_tensor_past_the_data_section_is_refused(spec, tmp_path):
    p = safetensors(tmp_path / "w.safetensors",
                    header(**{"fc.bias": {"dtype": "F32", "shape": [3], "data_offsets": [56, 68]}}), DATA)
    build_fails(spec, p, "tensor 'fc.bias' lies outside the file")


# ------------------------------------------------------------------ .safetensors header

def test_duplicate_header_keys_are_refused(spec, tmp_path):
    entry = '{"dtype": "F32", "shape": [3], "data_offsets": [48, 60]}'
    raw = ('{"fc.weight": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}, '
           f'"fc.bias": {entry}, "fc.bias": {entry}}}').encode()
    build_fails(spec, safetensors(tmp_path / "w.safetensors", raw), "key 'fc.bias' appears twice")


def test_duplicate_keys_inside_an_entry_are_refused(spec, tmp_path):
    raw = ('{"fc.weight": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}, '
           '"fc.bias": {"dtype": "F32", "dtype": "F16", "shape": [3], "data_offsets": [48, 60]}}').encode()
    build_fails(spec, safetensors(tmp_path / "w.safetensors", raw), "key 'dtype' appears twice")


@pytest.mark.parametrize("meta, kind", [([1, 2], "a list"), (5, "a number"), ("x", "a string"),
                                        ({"k": 1}, "non-string values"), ({"k": ["v"]}, "non-string values")])
def test_metadata_must_be_a_string_map(spec, tmp_path, meta, kind):
    p = safetensors(tmp_path / "w.safetensors", header(__metadata__=meta))
    build_fails(spec, p, "'__metadata__' must map strings to strings", kind)


@pytest.mark.parametrize("where", ["shape", "data_offsets"])
def test_an_integer_past_pythons_digit_limit_is_a_header_error(spec, tmp_path, where):
    big = "1" * 5001
    shape, offsets = (f"[{big}, 4]", "[0, 48]") if where == "shape" else ("[3, 4]", f"[0, {big}]")
    raw = f'{{"fc.weight": {{"dtype": "F32", "shape": {shape}, "data_offsets": {offsets}}}}}'.encode()
    err = build_fails(spec, safetensors(tmp_path / "w.safetensors", raw, DATA[:48]), "corrupt safetensors header")
    assert "set_int_max_str_digits" not in err


@pytest.mark.parametrize("entry, message", [
    ({"dtype": "F32", "shape": [-3, -4], "data_offsets": [0, 48]}, "lies outside the file or has the wrong size"),
    ({"dtype": "F32", "shape": [3.0, 4], "data_offsets": [0, 48]}, "corrupt entry for tensor 'fc.weight'"),
    ({"dtype": "F32", "shape": [3, 4], "data_offsets": [-48, 0]}, "lies outside the file"),
    ({"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48.0]}, "corrupt entry for tensor 'fc.weight'"),
    ({"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48, 60]}, "corrupt entry for tensor 'fc.weight'"),
    ({"dtype": "F32", "shape": [3, 4], "data_offsets": [48, 0]}, "lies outside the file"),
    ({"dtype": "F32", "shape": [1] * 70 + [3, 4], "data_offsets": [0, 48]}, "tensor 'fc.weight' cannot be loaded"),
    ([1, 2], "corrupt entry for tensor 'fc.weight'"),
])
def test_bad_numbers_in_an_entry_are_refused(spec, tmp_path, entry, message):
    build_fails(spec, safetensors(tmp_path / "w.safetensors", header(**{"fc.weight": entry})), message)


def test_nan_in_a_shape_is_refused(spec, tmp_path):
    raw = (b'{"fc.weight": {"dtype": "F32", "shape": [NaN, 4], "data_offsets": [0, 48]}, '
           b'"fc.bias": {"dtype": "F32", "shape": [3], "data_offsets": [48, 60]}}')
    build_fails(spec, safetensors(tmp_path / "w.safetensors", raw), "corrupt entry for tensor 'fc.weight'")


def test_a_header_length_past_the_end_of_the_file_is_refused(spec, tmp_path):
    (p := tmp_path / "w.safetensors").write_bytes(struct.pack("<Q", 1000) + b"{}")
    build_fails(spec, p, "header of 1000 bytes in a 10-byte file")


# ------------------------------------------------------------------ not a regular file

@pytest.fixture
def alarm():
    """Fail instead of hanging if something blocks (opening a FIFO with no writer)."""
    def timeout(*_):
        raise TimeoutError("blocked")
    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_a_named_pipe_is_refused_without_blocking(spec, tmp_path, suffix, alarm):
    os.mkfifo(fifo := tmp_path / f"w{suffix}")
    err = build_fails(spec, fifo, "is not a regular file (it is a named pipe)")
    assert "not found" not in err
    reader = read_safetensors if suffix == ".safetensors" else read_npz
    user_error(lambda: reader(fifo), "not a regular file")   # the readers themselves never block on it either


def test_a_directory_without_a_checkpoint_is_refused(spec, tmp_path):
    # a directory is read as a save_pretrained checkpoint directory (docs/huggingface.md)
    (d := tmp_path / "w.safetensors").mkdir()
    err = build_fails(spec, d, "has no model.safetensors or model.safetensors.index.json")
    assert "not found" not in err


def test_a_missing_file_is_still_not_found(spec, tmp_path):
    build_fails(spec, tmp_path / "nope.safetensors", "weights file not found")
