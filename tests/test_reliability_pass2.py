"""Reliability, second pass (issue 21): outputs of any name, compiled-model
metadata as untrusted input, bounded params and symbolic sizes, inputs checked
from their headers before they are inflated, and the leftovers and misreports
around files. Masked attention at extreme values: test_reliability_attention.py."""
from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from helpers import ROOT, TINY, cli, user_error

W = np.arange(12, dtype=np.float32).reshape(3, 4) / 10 - 0.5
B = np.array([0.1, -0.2, 0.3], np.float32)


@pytest.fixture
def tiny(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY)
    return p


@pytest.fixture
def tiny_model(tiny, tmp_path):
    out = tmp_path / "tiny.onnx"
    assert cli("build", tiny, "-o", out)[0] == 0
    return out


# ------------------------------------------------------------------ 1. outputs of any name

SAVEZ_NAMES = ["file", "allow_pickle", "args", "kwds", "arr_0", "compress", "y"]


def test_run_output_round_trips_outputs_named_like_savez_arguments(tmp_path):
    outs = "\n".join(f"  {n}: {'fc' if i % 2 else 'act'}" for i, n in enumerate(SAVEZ_NAMES))
    spec = tmp_path / "named.yaml"
    spec.write_text(TINY.replace("outputs: {y: act}\n", "outputs:\n" + outs + "\n"))
    np.savez(weights := tmp_path / "w.npz", **{"fc.weight": W, "fc.bias": B})
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    np.save(xf := tmp_path / "x.npy", x)
    rc, _, err = cli("run", spec, "--weights", weights, "--input", f"x={xf}", "--output", out := tmp_path / "o.npz")
    assert rc == 0, err
    fc = x @ W.T + B                                   # numpy from the math
    with np.load(out) as z:
        assert sorted(z.files) == sorted(SAVEZ_NAMES)
        for i, n in enumerate(SAVEZ_NAMES):
            np.testing.assert_allclose(z[n], fc if i % 2 else np.maximum(fc, 0), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ 2. metadata is untrusted input

EMBED = """graphc: 1
dims: {batch: 2, seq: {example: 3, max: 8}}
inputs:
  ids: {dtype: int64, shape: [batch, seq], range: [0, 10]}
  lengths: {dtype: int64, shape: [batch], range: [1, seq + 1]}
layers:
  - {name: emb, kind: embedding, input: ids, num_embeddings: 10, embedding_dim: 4}
  - {name: rnn, kind: lstm, inputs: {x: emb, lengths: lengths}, hidden_size: 3, batch_first: true}
outputs: {y: rnn}
"""

BAD_METADATA = [
    ("graphc.run_limits", "{not json"),
    ("graphc.run_limits", "[1, 2]"),
    ("graphc.run_limits", '{"dim_max": {"seq": ["8", ""]}}'),
    ("graphc.run_limits", '{"ids": {"ids": [10]}}'),
    ("graphc.run_limits", '{"ids": {"ids": [true, "emb"]}}'),
    ("graphc.run_limits", '{"steps": {"lengths": ["seq +", "rnn"]}}'),
    ("graphc.run_limits", '{"steps": {"lengths": [null, "rnn"]}}'),
    ("graphc.run_limits", '{"dim_max": {"seq": [1e999, ""]}}'),
    ("graphc.run_limits", "[" * 100000 + "]" * 100000),
    ("graphc.dim_examples", '{"seq": "three"}'),
    ("graphc.dim_examples", '{"seq": -3}'),
    ("graphc.dim_examples", '{"seq": 1e30}'),
    ("graphc.dim_examples", '{"seq": 100000000000000000000}'),
    ("graphc.dim_examples", "[]"),
    ("graphc.dim_examples", '{"seq": 3'),
    ("graphc.input_ranges", '{"ids": [0]}'),
    ("graphc.input_ranges", '{"ids": "0..10"}'),
    ("graphc.input_ranges", '{"ids": [0, "import os"]}'),
    ("graphc.input_ranges", '{"ids": [0, {"a": 1}]}'),
    ("graphc.input_ranges", '{"lengths": [1, "seq ** 99"]}'),
]


@pytest.fixture(scope="module")
def embed_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("meta")
    (d / "m.yaml").write_text(EMBED)
    assert cli("build", d / "m.yaml", "-o", d / "m.onnx")[0] == 0
    return d / "m.onnx"


def with_metadata(model: Path, out: Path, key: str, value: str | None) -> Path:
    m = onnx.load(str(model))
    props = {p.key: p.value for p in m.metadata_props}
    if value is None:
        props.pop(key, None)
    else:
        props[key] = value
    del m.metadata_props[:]
    helper.set_model_props(m, props)
    onnx.save(m, str(out))
    return out


@pytest.mark.parametrize("key, value", BAD_METADATA, ids=[f"{k[7:]}-{i}" for i, (k, _) in enumerate(BAD_METADATA)])
def test_malformed_graphc_metadata_is_a_clear_error(embed_model, tmp_path, key, value):
    bad = with_metadata(embed_model, tmp_path / "bad.onnx", key, value)
    err = user_error(cli("run", bad, "--random"), f"its metadata entry '{key}' is malformed")
    assert "rebuild it with graphc build" in err


def test_intact_metadata_still_checks_and_missing_metadata_runs(embed_model, tmp_path):
    assert cli("run", embed_model, "--random")[0] == 0
    np.save(ids := tmp_path / "ids.npy", np.array([[1, 2, 10]] * 2, np.int64))
    user_error(cli("run", embed_model, "--input", f"ids={ids}", "--random"), "outside")
    bare = embed_model
    for key in ("graphc.run_limits", "graphc.dim_examples", "graphc.input_ranges", "graphc.sequence_lengths"):
        bare = with_metadata(bare, tmp_path / "bare.onnx", key, None)
    rc, _, err = cli("run", bare, "--dim", "batch=2", "--dim", "seq=3", "--random")
    assert rc == 0 or (rc == 2 and "internal error" not in err), err


@pytest.mark.parametrize("command", [["schema"], ["layers"], ["check", "specs/mlp.yaml"]])
def test_closed_stdout_is_not_an_internal_error(command):
    p = subprocess.run(["sh", "-c", " ".join([sys.executable, "-m", "graphc", *command]) + " >&-"],
                       cwd=ROOT, capture_output=False, stderr=subprocess.PIPE, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr
    assert "internal error" not in p.stderr and "Traceback" not in p.stderr


# ------------------------------------------------------------------ 3. bounded params and sizes

def _spec_with_params(params: list[str], width: str = "3", shape: str = "[batch, 4]") -> str:
    return ("graphc: 1\nparams:\n" + "".join(f"  {p}\n" for p in params) +
            f"dims: {{batch: 2, seq: 3, a: 1, b: 1, c: 1, d: 1, e: 1, f: 1, g: 1, h: 1, i: 1, j: 1, k: 1, l: 1}}\n"
            f"inputs:\n  x: {{dtype: float32, shape: {shape}}}\n"
            f"layers:\n  - {{name: fc, kind: linear, input: x, out_features: {width}}}\noutputs: {{y: fc}}\n")


def test_params_that_square_themselves_are_refused_at_the_param(tmp_path):
    p = tmp_path / "sq.yaml"
    p.write_text(_spec_with_params(["p0: 10"] + [f"p{i}: p{i - 1} * p{i - 1}" for i in range(1, 40)]))
    err = user_error(cli("check", p), "larger than 2**63", located=str(p))
    assert err.splitlines()[0].startswith(f"{p}:8:")     # p5 = 10**32 (line 8): the first past 2**63


def test_a_huge_literal_in_an_expression_is_refused(tmp_path):
    p = tmp_path / "lit.yaml"
    p.write_text(_spec_with_params([f"p: '{'9' * 200} + 1'"]))
    user_error(cli("check", p), "larger than 2**63", located=str(p))


def test_chained_params_check_in_linear_time(tmp_path):
    """20,000 params, each the one above plus 1 (49,000 took 58 s when each
    param copied the names defined so far); the last is the layer's width."""
    n = 20_000
    p = tmp_path / "chain.yaml"
    p.write_text(_spec_with_params(["p0: 1"] + [f"p{i}: p{i - 1} + 1" for i in range(1, n)], width=f"p{n - 1}"))
    rc, out, err = cli("check", p)
    assert rc == 0, err
    assert f"float32[batch, {n}]" in out


def test_polynomial_dims_are_bounded_where_they_are_made(tmp_path):
    # 2**6 = 64 monomials from six sums multiplied: over the 32-term bound
    shape = '[batch, "(a + b) * (c + d) * (e + f) * (g + h) * (i + j) * (k + l)"]'
    p = tmp_path / "poly.yaml"
    p.write_text(_spec_with_params(["unused: 1"], shape=shape))
    user_error(cli("check", p), "terms, more than 32", located=str(p))


def test_sizes_doubled_layer_after_layer_are_refused_at_the_layer(tmp_path):
    layers = ["  - {name: l0, kind: concat, inputs: [x, x], axis: 1}"]
    layers += [f"  - {{name: l{i}, kind: concat, inputs: [l{i - 1}, l{i - 1}], axis: 1}}" for i in range(1, 80)]
    p = tmp_path / "dbl.yaml"
    p.write_text("graphc: 1\ndims: {batch: 2, seq: 3}\ninputs:\n  x: {dtype: float32, shape: [batch, seq]}\n"
                 "layers:\n" + "\n".join(layers) + "\noutputs: {y: l79}\n")
    err = user_error(cli("check", p), "grows past 2**62", located=str(p))
    assert "concat 'l62'" in err                            # l62 is seq * 2**63: the first past 2**62


@pytest.mark.parametrize("axis", ["147573952589676412928", '"seq * 147573952589676412928"',
                                  '"147573952589676412928 * seq + 1"', "-9223372036854775808"])
def test_an_input_axis_of_2_to_the_67_is_refused_at_check_and_build(tmp_path, axis):
    p = tmp_path / "axis.yaml"
    p.write_text(f"graphc: 1\ndims: {{batch: 2, seq: 3}}\ninputs:\n  x: {{dtype: float32, shape: [batch, {axis}]}}\n"
                 "layers:\n  - {name: act, kind: relu, input: x}\noutputs: {y: act}\n")
    for command in (["check", p], ["build", p, "-o", tmp_path / "axis.onnx"]):
        user_error(cli(*command), "2", located=str(p))
    assert not (tmp_path / "axis.onnx").exists()


# ------------------------------------------------------------------ 4. inputs checked from their headers

def _compressed_npz(path: Path, name: str, shape, dtype=np.float32) -> Path:
    """A deflated .npz of zeros, streamed (the test itself never holds the array)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                                     "shape": tuple(shape)})
            left = int(np.prod(shape)) * np.dtype(dtype).itemsize
            chunk = bytes(1 << 22)
            while left:
                f.write(chunk[:min(left, len(chunk))])
                left -= min(left, len(chunk))
    return path


def test_a_compressed_input_of_the_wrong_shape_is_refused_before_it_is_inflated(tiny_model, tmp_path):
    z = _compressed_npz(tmp_path / "big.npz", "x", (2, 25_000_000))      # 200 MB inflated, ~0.2 MB on disk
    assert z.stat().st_size < 2_000_000
    tracemalloc.start()
    try:
        err = user_error(cli("run", tiny_model, "--input", z), "axis 1 has size 25000000, the model expects 4")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50_000_000, (peak, err)


def test_compressed_inputs_that_fit_the_model_are_bounded_when_inflated(tiny, tmp_path, monkeypatch):
    from graphc.runtime import arrays_io
    spec = tmp_path / "dyn.yaml"
    spec.write_text(TINY)                                  # x: [batch, 4]: any batch fits
    model = tmp_path / "dyn.onnx"
    assert cli("build", spec, "-o", model)[0] == 0
    monkeypatch.setattr(arrays_io, "MAX_INFLATED_INPUT_BYTES", 1 << 20)
    z = _compressed_npz(tmp_path / "fits.npz", "x", (100_000, 4))      # 1.6 MB inflated
    user_error(cli("run", model, "--input", z), "would inflate to 1,600,000 bytes")
    np.savez(plain := tmp_path / "plain.npz", x=np.ones((100_000, 4), np.float32))   # stored: mapped, no cap
    rc, out, err = cli("run", model, "--input", plain)
    assert rc == 0, err


def test_an_npy_header_claiming_4e12_elements_is_an_input_error(tiny_model, tmp_path):
    p = tmp_path / "x.npy"
    with open(p, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (2, 2_000_000_000_000)})
        f.write(bytes(64))
    err = user_error(cli("run", tiny_model, "--input", f"x={p}"), "declares shape [2, 2000000000000]")
    assert "too large" not in err and "out of memory" not in err


def test_input_headers_are_checked_against_the_model_and_each_other(tmp_path):
    spec = tmp_path / "two.yaml"
    spec.write_text("graphc: 1\ndims: {batch: 2}\ninputs:\n  x: {dtype: float32, shape: [batch, 4]}\n"
                    "  z: {dtype: float32, shape: [batch, 4]}\nlayers:\n  - {name: s, kind: add, inputs: [x, z]}\n"
                    "outputs: {y: s}\n")
    model = tmp_path / "two.onnx"
    assert cli("build", spec, "-o", model)[0] == 0
    np.save(x := tmp_path / "x.npy", np.ones((2, 4), np.float32))
    z = _compressed_npz(tmp_path / "z.npz", "z", (3, 4))
    user_error(cli("run", model, "--input", f"x={x}", "--input", z), "dim 'batch' is 2 in input 'x' but 3")


def test_input_files_that_are_directories_or_fifos_say_so(tiny_model, tmp_path):
    (d := tmp_path / "dir.npy").mkdir()
    user_error(cli("run", tiny_model, "--input", f"x={d}"), "is a directory")
    os.mkfifo(fifo := tmp_path / "fifo.npy")
    user_error(cli("run", tiny_model, "--input", f"x={fifo}"), "not a regular file")


# ------------------------------------------------------------------ 6. leftovers and misreports

def _temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".graphc-"))


def test_sigterm_while_writing_an_output_leaves_no_temporary(tmp_path):
    """The write's data function sends SIGTERM to its own process half way."""
    script = (
        "import os, signal, sys\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from graphc.cli import main\n"
        "from graphc.runtime import arrays_io\n"
        "real = arrays_io.write_npz\n"
        "def slow(f, arrays):\n"
        "    f.write(b'partial')\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    real(f, arrays)\n"
        "arrays_io.write_npz = slow\n"
        "sys.exit(main(['run', sys.argv[1], '--random', '--output', sys.argv[3]]))\n")
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    out = tmp_path / "out.npz"
    p = subprocess.run([sys.executable, "-c", script, str(spec), str(ROOT), str(out)], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 130, (p.returncode, p.stderr)
    assert "interrupted" in p.stderr and "Traceback" not in p.stderr
    assert not out.exists() and _temporaries(tmp_path) == []


def test_stale_temporaries_of_killed_runs_are_removed_on_the_next_write(tiny, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from graphc.atomic_write import _host_tag
    host = _host_tag()
    (stale := tmp_path / f".graphc-{dead.pid}-{host}-abc123").mkdir()
    (stale / "tiny.onnx").write_bytes(b"half a model")
    kept = [f".graphc-{os.getpid()}-{host}-live",        # running graphc processes' own
            f".graphc-{os.getppid()}-{host}-other",
            f".graphc-{dead.pid}-{'0' * 6 if host != '0' * 6 else '1' * 6}-nfs",   # another host's
            ".graphc-notours"]                            # not our naming
    for name in kept:
        (tmp_path / name).mkdir()
    assert cli("build", tiny, "-o", tmp_path / "tiny.onnx")[0] == 0
    assert _temporaries(tmp_path) == sorted(kept)


def test_sigkilled_build_leaves_a_temporary_that_the_next_build_removes(tiny, tmp_path):
    """A real SIGKILL (no cleanup can run) while the model is written."""
    script = (
        "import os, signal, sys\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from graphc.cli import main\n"
        "from graphc.lower import stream\n"
        "real = stream.write_model\n"
        "def killed(f, *a, **k):\n"
        "    f.write(b'partial')\n"
        "    f.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "stream.write_model = killed\n"
        "sys.exit(main(['build', sys.argv[1], '-o', sys.argv[3]]))\n")
    out = tmp_path / "tiny.onnx"
    p = subprocess.run([sys.executable, "-c", script, str(tiny), str(ROOT), str(out)], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert len(_temporaries(tmp_path)) == 1                          # what SIGKILL leaves
    assert cli("build", tiny, "-o", out)[0] == 0
    assert _temporaries(tmp_path) == [] and out.stat().st_size > 100


@pytest.mark.parametrize("command", ["build", "graph", "run"])
def test_writing_over_a_0600_file_keeps_its_mode(tiny, tmp_path, command):
    out = tmp_path / ("out.npz" if command == "run" else "out.txt")
    out.write_bytes(b"old")
    out.chmod(0o600)
    args = {"build": ["build", tiny, "-o", out], "graph": ["graph", tiny, "-o", out],
            "run": ["run", tiny, "--random", "--output", out]}[command]
    rc, _, err = cli(*args)
    assert rc == 0, err
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_bytes() != b"old"


@pytest.mark.parametrize("command", ["build", "graph", "run"])
def test_an_output_path_ending_in_a_slash_is_a_clear_error(tiny, tmp_path, command):
    out = f"{tmp_path / 'newdir'}/"
    args = {"build": ["build", tiny, "-o", out], "graph": ["graph", tiny, "-o", out],
            "run": ["run", tiny, "--random", "--output", out]}[command]
    user_error(cli(*args), "a path ending in '/' names a directory")
    assert not (tmp_path / "newdir").exists()


def test_fifo_and_directory_includes_are_not_reported_missing(tmp_path):
    os.mkfifo(tmp_path / "blocks.yaml")
    (tmp_path / "dir.yaml").mkdir()
    for inc, message in (("blocks.yaml", "is not a regular file"), ("dir.yaml", "is a directory")):
        spec = tmp_path / "main.yaml"
        spec.write_text(f"graphc: 1\ninclude: [{inc}]\n" + TINY.split("\n", 1)[1])
        err = user_error(cli("check", spec), message, located=str(spec))
        assert "not found" not in err


def test_a_directory_given_as_the_model_is_not_reported_missing(tmp_path):
    (d := tmp_path / "model.onnx").mkdir()
    err = user_error(cli("run", d, "--random"), "is a directory")
    assert "not found" not in err


def _onnx_model(path: Path, elem_type: int, shape) -> Path:
    x = helper.make_tensor_value_info("x", elem_type, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    g = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], "g", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_an_unnamed_dynamic_dim_never_asks_for_dim_none(tmp_path):
    model = _onnx_model(tmp_path / "m.onnx", TensorProto.FLOAT, [None, 4])
    err = user_error(cli("run", model, "--random"), "axis 0 is dynamic and unnamed")
    assert "None" not in err
    np.save(x := tmp_path / "x.npy", np.ones((3, 4), np.float32))
    assert cli("run", model, "--input", f"x={x}")[0] == 0


@pytest.mark.parametrize("elem, dtype", [(TensorProto.UINT8, np.uint8), (TensorProto.INT8, np.int8),
                                         (TensorProto.UINT16, np.uint16), (TensorProto.INT16, np.int16)])
def test_random_inputs_have_the_inputs_integer_type(tmp_path, elem, dtype):
    model = _onnx_model(tmp_path / "m.onnx", elem, [2, 3])
    rc, out, err = cli("run", model, "--random", "--output", o := tmp_path / "o.npz")
    assert rc == 0, err
    with np.load(o) as z:                                  # Cast of values in [0, 2): whole numbers
        assert set(np.unique(z["y"])) <= {0.0, 1.0}


LSTM = """graphc: 1
dims: {batch: 2, seq: 16}
inputs:
  x: {dtype: float32, shape: [batch, seq, 4]}
  lengths: {dtype: int64, shape: [batch], range: [1, seq + 1]}
layers:
  - {name: rnn, kind: lstm, inputs: {x: x, lengths: lengths}, hidden_size: 3, batch_first: true}
outputs: {y: rnn}
"""


def test_random_lengths_follow_the_given_inputs_length(tmp_path):
    spec = tmp_path / "lstm.yaml"
    spec.write_text(LSTM)
    np.save(x := tmp_path / "x.npy", np.ones((5, 3, 4), np.float32))      # batch 5, seq 3 (examples: 2, 16)
    rc, out, err = cli("run", spec, "--input", f"x={x}", "--random", "--output", o := tmp_path / "o.npz")
    assert rc == 0, err
    with np.load(o) as z:
        assert z["y"].shape == (5, 3, 3)


def test_the_same_spec_text_under_another_name_builds_the_same_bytes(tmp_path):
    text = (ROOT / "specs" / "mlp.yaml").read_text()
    assert "\nname:" in "\n" + text
    for n in ("a", "b"):
        (tmp_path / f"{n}.yaml").write_text(text)
        assert cli("build", tmp_path / f"{n}.yaml", "-o", tmp_path / f"{n}.onnx")[0] == 0
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
