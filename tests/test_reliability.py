"""Reliability: everything a user can get wrong ends in a clear error with exit
code 2 (located in the spec when it is about the spec), hostile input is
refused quickly with bounded memory, outputs are never half-written or
written over their own inputs, and builds are byte-identical across runs and
hash seeds. Spec-located errors also have goldens in tests/errors/."""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from graphc.expand import MAX_REPEAT
from graphc.source import MAX_SPEC_BYTES, load_yaml_text
from graphc.specfile import parse_spec_text
from helpers import ROOT, SPECS, TINY, cli, graphc_cli, user_error

TINY_WEIGHTS = {"fc.weight": np.ones((3, 4), np.float32), "fc.bias": np.zeros(3, np.float32)}


@pytest.fixture
def tiny(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY)
    return p


def no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.startswith(".graphc-")]


# ------------------------------------------------------------------ includes

BLOCK = """blocks:
  mlp:
    inputs: [x]
    layers:
      - {name: fc, kind: linear, input: x, out_features: 4}
    outputs: {y: fc}
"""


def _main_spec(include: str) -> str:
    return TINY.replace("graphc: 1\n", f"graphc: 1\ninclude: {include}\n").replace(
        "{name: act, kind: relu, input: fc}", "{name: act, kind: mlp, input: fc}")


def test_include_cycle_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("include: b.yaml\n" + BLOCK)
    (tmp_path / "b.yaml").write_text("include: a.yaml\n")
    (tmp_path / "main.yaml").write_text(_main_spec("a.yaml"))
    err = user_error(cli("check", tmp_path / "main.yaml"), "include cycle: a.yaml -> b.yaml -> a.yaml",
                            located=str(tmp_path / "b.yaml"))
    assert "1:10" in err.splitlines()[0]


def test_self_include_is_a_cycle(tmp_path):
    (tmp_path / "main.yaml").write_text(_main_spec("main.yaml"))
    user_error(cli("check", tmp_path / "main.yaml"), "include cycle", located=str(tmp_path / "main.yaml"))


def test_missing_include_is_located_in_the_including_file(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "blocks.yaml").write_text("include: helpers.yaml\n" + BLOCK)
    (tmp_path / "main.yaml").write_text(_main_spec("lib/blocks.yaml"))
    user_error(cli("check", tmp_path / "main.yaml"), "included file not found: helpers.yaml",
                      located=str(tmp_path / "lib" / "blocks.yaml"))


def test_includes_resolve_relative_to_the_including_file(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "blocks.yaml").write_text("include: more.yaml\n")
    (tmp_path / "lib" / "more.yaml").write_text(BLOCK)
    (tmp_path / "main.yaml").write_text(_main_spec("lib/blocks.yaml"))
    rc, out, err = cli("check", tmp_path / "main.yaml")
    assert rc == 0, err


def test_diamond_includes_define_each_block_once(tmp_path):
    (tmp_path / "common.yaml").write_text(BLOCK)
    (tmp_path / "left.yaml").write_text("include: common.yaml\n")
    (tmp_path / "right.yaml").write_text("include: common.yaml\n")
    (tmp_path / "main.yaml").write_text(_main_spec("[left.yaml, right.yaml]"))
    rc, _, err = cli("check", tmp_path / "main.yaml")
    assert rc == 0, err


def test_include_escaping_the_directory_needs_include_dir(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "proj").mkdir()
    (tmp_path / "shared" / "blocks.yaml").write_text(BLOCK)
    main_spec = tmp_path / "proj" / "main.yaml"
    main_spec.write_text(_main_spec("../shared/blocks.yaml"))
    user_error(cli("check", main_spec), "is outside the spec's directory", located=str(main_spec))
    rc, _, err = cli("check", main_spec, "--include-dir", tmp_path / "shared")
    assert rc == 0, err
    # an absolute path, and a symlink pointing out of the directory, are no way around it
    main_spec.write_text(_main_spec(str(tmp_path / "shared" / "blocks.yaml")))
    user_error(cli("check", main_spec), "is outside the spec's directory", located=str(main_spec))
    (tmp_path / "proj" / "link.yaml").symlink_to(tmp_path / "shared" / "blocks.yaml")
    main_spec.write_text(_main_spec("link.yaml"))
    user_error(cli("check", main_spec), "is outside the spec's directory", located=str(main_spec))


def test_included_files_have_their_keys_checked(tmp_path):
    (tmp_path / "lib.yaml").write_text(BLOCK + "blokcs: {}\n")
    (tmp_path / "main.yaml").write_text(_main_spec("lib.yaml"))
    err = user_error(cli("check", tmp_path / "main.yaml"), "unknown key 'blokcs'",
                            located=str(tmp_path / "lib.yaml"))
    assert "did you mean 'blocks'?" in err


# ------------------------------------------------------------------ hostile YAML

def _billion_laughs(levels: int = 9) -> str:
    text = 'graphc: 1\nl0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for i in range(1, levels):
        text += f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n"
    return text


@contextlib.contextmanager
def bounded(seconds: float, megabytes: float):
    """Assert the block runs within a time and a Python-allocation bound."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < seconds, f"took {elapsed:.2f} s"
    assert peak < megabytes * 2 ** 20, f"peak allocation {peak / 2 ** 20:.0f} MiB"


def test_billion_laughs_is_refused_fast_with_bounded_memory(tmp_path):
    text = _billion_laughs()            # 9**9 = 387 million strings once expanded
    with bounded(seconds=2, megabytes=64):
        user_error(lambda: load_yaml_text(text, "laughs.yaml"), "expands to more than")
    p = tmp_path / "laughs.yaml"
    p.write_text(text)
    user_error(cli("check", p), "expands to more than", located=str(p))


def test_recursive_alias_is_refused():
    user_error(lambda: load_yaml_text("graphc: 1\nx: &a [1, *a]\n", "rec.yaml"), "recursive structure")


@pytest.mark.parametrize("text", [
    "graphc: 1\nx: " + "[" * 10_000 + "]" * 10_000 + "\n",
    "graphc: 1\nx: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n",
    "graphc: 1\n" + "".join(" " * i + "a:\n" for i in range(200)) + " " * 200 + "a: 1\n",
    "graphc: 1\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" if i else "a0: &a0 [1]\n" for i in range(5000)),
], ids=["flow-lists", "flow-maps", "block-maps", "alias-chain"])
def test_deep_nesting_is_refused_fast(text):
    with bounded(seconds=2, megabytes=64):
        error = user_error(lambda: load_yaml_text(text, "deep.yaml"), "nested more than 64 levels")
    assert error.span.line >= 2


def test_deep_nesting_through_the_cli(tmp_path):
    p = tmp_path / "deep.yaml"
    p.write_text("graphc: 1\nx: " + "[" * 10_000 + "]" * 10_000 + "\n")
    err = user_error(cli("check", p), "nested more than 64 levels", located=str(p))
    assert max(len(line) for line in err.splitlines()) < 300, "the quoted line is cut to a window"


def test_oversized_spec_is_refused_before_parsing(tmp_path):
    p = tmp_path / "big.yaml"
    p.write_text("graphc: 1\n" + "#" * MAX_SPEC_BYTES + "\n")
    t0 = time.perf_counter()
    user_error(cli("check", p), "spec file is larger than 1024 KiB", located=str(p))
    assert time.perf_counter() - t0 < 2


def test_too_many_values_and_huge_numbers_are_refused(tmp_path):
    p = tmp_path / "many.yaml"
    p.write_text("graphc: 1\nx: [" + ",".join(["1"] * 150_000) + "]\n")
    t0 = time.perf_counter()
    user_error(cli("check", p), "more than 100000 YAML values", located=str(p))
    assert time.perf_counter() - t0 < 3
    p.write_text("graphc: 1\nx: " + "9" * 5000 + "\n")
    user_error(cli("check", p), "the number is too long", located=str(p))


def test_only_the_safe_loader_runs(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.yaml"
    for payload in (f"!!python/object/apply:os.system ['touch {marker}']",
                    f"!!python/object/new:os.system ['touch {marker}']",
                    "!!python/name:os.system"):
        p.write_text(f"graphc: 1\nname: {payload}\n")
        user_error(cli("check", p), "python/", located=p, where="2:7")       # at the tagged value
    assert not marker.exists()


@pytest.mark.parametrize("raw, message", [
    (b"graphc: 1\n\xff\xfe\n", "not UTF-8"),
    (b"graphc: 1\x00\n", "NUL bytes"),
    (b"", "the spec is empty"),
    (b"- just\n- a list\n", "a spec must be a mapping"),
    (b"graphc: 1\n---\ngraphc: 1\n", "malformed YAML"),
    (b"graphc: 1\nx: !!set {a, b}\n", "unsupported YAML tag"),
    (b"graphc: 2001-12-14\n", "unsupported YAML value of type date"),
])
def test_unreadable_spec_text(tmp_path, raw, message):
    p = tmp_path / "s.yaml"
    p.write_bytes(raw)
    user_error(cli("check", p), message, located=str(p))


# ------------------------------------------------------------------ budgets

def test_huge_width_is_refused_before_any_allocation(tmp_path):
    p = tmp_path / "huge.yaml"
    p.write_text(TINY.replace("out_features: 3", "out_features: 1000000000"))
    with bounded(seconds=2, megabytes=32):
        err = user_error(cli("build", p, "-o", tmp_path / "o.onnx"), "over the budget of 2.0 GiB",
                                located=str(p))
    assert "'fc.weight'" in err and "--max-param-bytes" in err
    assert not (tmp_path / "o.onnx").exists()
    # check allocates nothing: a bigger budget lets it through
    rc, out, err = cli("check", p, "--max-param-bytes", "8T")
    assert rc == 0, err
    assert "5,000,000,000 parameters" in out


def test_constant_tables_too_big_for_the_budget_fail_at_their_layer(tmp_path):
    """A positional table (max_len x width) is computed while its layer
    expands; an absurd width fails at once, located, instead of filling RAM."""
    p = tmp_path / "pe.yaml"
    p.write_text("graphc: 1\ndims: [batch, seq]\ninputs: {x: {dtype: float32, shape: [batch, seq, 131072]}}\n"
                 "layers: [{name: pe, kind: sinusoidal_pe, input: x, max_len: 65536}]\noutputs: {y: pe}\n")
    t0 = time.perf_counter()
    user_error(cli("check", p), "sinusoidal_pe 'pe'", located=str(p))
    assert time.perf_counter() - t0 < 5


def test_max_param_bytes_flag_on_build_and_run(tiny, tmp_path):
    out = tmp_path / "o.onnx"
    # tiny has 15 float32 parameters = 60 bytes
    user_error(cli("build", tiny, "-o", out, "--max-param-bytes", "50"), "over the budget of 50 bytes",
                      located=str(tiny))
    assert cli("build", tiny, "-o", out, "--max-param-bytes", "1K")[0] == 0
    user_error(cli("run", tiny, "--random", "--max-param-bytes", "50"), "over the budget", located=str(tiny))
    user_error(cli("build", tiny, "-o", out, "--max-param-bytes", "lots"), "expected a size like 4G",
               usage=True)


def test_repeat_is_bounded(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(TINY.replace("{name: act, kind: relu, input: fc}",
                              f"{{name: act, kind: relu, input: fc, repeat: {MAX_REPEAT + 1}}}"))
    user_error(cli("check", p), f"'repeat' must be at most {MAX_REPEAT}", located=str(p))
    p.write_text(TINY.replace("{name: act, kind: relu, input: fc}",
                              f"{{name: act, kind: relu, input: fc, repeat: {MAX_REPEAT}}}"))
    assert cli("check", p)[0] == 0


def test_nested_repeats_are_bounded_in_time(tmp_path):
    """A block of 40 linears repeated 1024 times: 120,000 primitives. Refused at
    the primitive limit, located at the layer that crossed it, within seconds."""
    body = "\n".join(f"      - {{name: l{i}, kind: linear, input: {'x' if i == 0 else f'l{i - 1}'}, out_features: 4}}"
                     for i in range(40))
    p = tmp_path / "many.yaml"
    p.write_text(f"graphc: 1\ndims: [batch]\nblocks:\n  blk:\n    inputs: [x]\n    layers:\n{body}\n"
                 f"    outputs: {{y: l39}}\ninputs:\n  x: {{dtype: float32, shape: [batch, 4]}}\n"
                 f"layers:\n  - {{name: b, kind: blk, input: x, repeat: 1024}}\noutputs: {{y: b}}\n")
    t0 = time.perf_counter()
    user_error(cli("check", p), "primitive operations", located=str(p))
    assert time.perf_counter() - t0 < 10


# ------------------------------------------------------------------ weights

def _safetensors_bytes(tensors: dict) -> bytes:
    from safetensors.numpy import save
    return save(tensors)


def _bomb_npz(path: Path, declared_elements: int) -> None:
    """A small .npz whose member declares a gigantic array."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (declared_elements,)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("fc.weight.npy", "w", force_zip64=True) as f:
            f.write(header.getvalue() + b"\0" * (1 << 20))


def _weights_case(tmp_path: Path, kind: str) -> Path:
    rng = np.random.default_rng(0)
    good = dict(TINY_WEIGHTS)
    if kind == "truncated.safetensors":
        data = _safetensors_bytes(good)
        (p := tmp_path / "w.safetensors").write_bytes(data[:len(data) - 7])
    elif kind == "random.safetensors":
        (p := tmp_path / "w.safetensors").write_bytes(rng.bytes(4096))
    elif kind == "random.npz":
        (p := tmp_path / "w.npz").write_bytes(rng.bytes(4096))
    elif kind == "empty.npz":
        (p := tmp_path / "w.npz").write_bytes(b"")
    elif kind == "truncated.npz":
        np.savez(tmp_path / "full.npz", **good)
        data = (tmp_path / "full.npz").read_bytes()
        (p := tmp_path / "w.npz").write_bytes(data[:len(data) // 2])
    elif kind == "npy-not-npz":
        np.save(tmp_path / "w.npy", good["fc.weight"])
        p = (tmp_path / "w.npy").rename(tmp_path / "w.npz")
    elif kind == "bomb.npz":
        _bomb_npz(p := tmp_path / "w.npz", 10 ** 10)
    elif kind == "absurd-header.safetensors":
        header = json.dumps({"fc.weight": {"dtype": "F32", "shape": [2 ** 40, 2 ** 40], "data_offsets": [0, 0]}})
        (p := tmp_path / "w.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode())
    elif kind == "f8.safetensors":       # bfloat16 loads (tests/test_checkpoint.py); 8-bit floats do not
        header = json.dumps({"fc.weight": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}})
        (p := tmp_path / "w.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0\0")
    elif kind == "unknown-suffix":
        (p := tmp_path / "w.pt").write_bytes(b"\x80\x02")
    else:
        bad = dict(good)
        if kind == "wrong-shape":
            bad["fc.weight"] = np.ones((4, 3), np.float32)
        elif kind == "extra":
            bad["fc.extra"] = np.ones(2, np.float32)
        elif kind == "missing":
            del bad["fc.bias"]
        elif kind == "int":
            bad["fc.bias"] = np.zeros(3, np.int64)
        elif kind == "nan":
            bad["fc.bias"] = np.array([0, np.nan, 0], np.float32)
        elif kind == "overflow":
            bad["fc.bias"] = np.array([0, 1e300, 0], np.float64)
        elif kind == "object":
            bad["fc.bias"] = np.array([{}, {}, {}], dtype=object)
        np.savez(p := tmp_path / "w.npz", **bad)
    return p


WEIGHT_CASES = {
    "truncated.safetensors": "truncated or corrupt",
    "random.safetensors": "not a safetensors file",
    "random.npz": "not a readable .npz file",
    "empty.npz": "not a readable .npz file",
    "truncated.npz": "not a readable .npz file",
    "npy-not-npz": "a .npy array, not an .npz archive",
    "bomb.npz": "take more than 2.0 GiB",
    "absurd-header.safetensors": "truncated or corrupt",
    "f8.safetensors": "dtype F8_E4M3, which graphc cannot convert",
    "unknown-suffix": "unknown weights format '.pt'",
    "wrong-shape": "wrong shape: fc.weight is [4, 3], expected [3, 4]",
    "extra": "unexpected: fc.extra [2]",
    "missing": "missing: fc.bias [3]",
    "int": "wrong dtype: fc.bias is int64, expected float32",
    "nan": "contains NaN or infinity",
    "overflow": "values too large for float32",
    "object": "dtype object",
}


@pytest.mark.parametrize("kind", list(WEIGHT_CASES))
def test_bad_weight_files(tiny, tmp_path, kind):
    weights = _weights_case(tmp_path, kind)
    out = tmp_path / "o.onnx"
    out.write_bytes(b"earlier")
    with bounded(seconds=5, megabytes=64):
        user_error(cli("build", tiny, "-o", out, "--weights", weights), WEIGHT_CASES[kind])
    assert out.read_bytes() == b"earlier"
    assert no_temp_files(tmp_path)


def test_weight_mismatches_are_listed_together(tiny, tmp_path):
    np.savez(w := tmp_path / "w.npz", **{"fc.weight": np.ones((4, 3), np.float32), "other": np.ones(1)})
    err = user_error(cli("build", tiny, "-o", tmp_path / "o.onnx", "--weights", w), "(3 problems)")
    for part in ("missing: fc.bias", "unexpected: other", "wrong shape: fc.weight"):
        assert part in err


def test_good_weights_load(tiny, tmp_path):
    np.savez(w := tmp_path / "w.npz", **TINY_WEIGHTS)
    (s := tmp_path / "w.safetensors").write_bytes(_safetensors_bytes(TINY_WEIGHTS))
    for weights in (w, s):
        rc, _, err = cli("build", tiny, "-o", tmp_path / "o.onnx", "--weights", weights)
        assert rc == 0, err


def test_bad_weights_through_the_real_cli(tiny, tmp_path):
    w = _weights_case(tmp_path, "truncated.safetensors")
    user_error(graphc_cli("build", str(tiny), "-o", str(tmp_path / "o.onnx"), "--weights", str(w)),
               "truncated or corrupt")


# ------------------------------------------------------------------ run-time inputs

@pytest.fixture
def tiny_model(tiny, tmp_path):
    out = tmp_path / "tiny.onnx"
    assert cli("build", tiny, "-o", out)[0] == 0
    return out


@pytest.mark.parametrize("array, message", [
    (np.zeros((2, 4, 1), np.float32), "has rank 3"),
    (np.zeros((2,), np.float32), "has rank 1"),
    (np.zeros((2, 5), np.float32), "axis 1 has size 5, the model expects 4"),
    (np.zeros((2, 4), np.float64), "has dtype float64, the model expects float32"),
    (np.zeros((2, 4), np.int64), "has dtype int64"),
    (np.zeros((2, 4), bool), "has dtype bool"),
])
def test_run_time_inputs_of_the_wrong_rank_dims_or_dtype(tiny_model, tmp_path, array, message):
    np.save(x := tmp_path / "x.npy", array)
    user_error(cli("run", tiny_model, "--input", f"x={x}"), message)


def test_run_time_input_files_and_names(tiny_model, tmp_path):
    np.save(x := tmp_path / "x.npy", np.zeros((2, 4), np.float32))
    user_error(cli("run", tiny_model, "--input", f"x={x}", "--input", f"z={x}"), "has no input 'z'")
    user_error(cli("run", tiny_model), "input 'x' is missing")
    (junk := tmp_path / "junk.npy").write_bytes(os.urandom(100))
    user_error(cli("run", tiny_model, "--input", f"x={junk}"), "is not a .npy file")
    np.save(trunc := tmp_path / "trunc.npy", np.zeros((64, 4), np.float32))
    trunc.write_bytes(trunc.read_bytes()[:200])
    user_error(cli("run", tiny_model, "--input", f"x={trunc}"), "cannot read input 'x'")
    np.savez(z := tmp_path / "in.npz", x=np.zeros((2, 4), np.float32))
    user_error(cli("run", tiny_model, "--input", f"x={z}"), "is an .npz archive")
    assert cli("run", tiny_model, "--input", z)[0] == 0
    user_error(cli("run", tiny_model, "--input", tmp_path / "nope.npz"), "file not found")
    user_error(cli("run", tiny_model, "--random", "--dim", "batch=100000000000"), "random inputs")
    user_error(cli("run", tiny_model, "--random", "--bench", "-1"), "--bench must not be negative")
    user_error(cli("run", tmp_path / "nope.onnx"), "model file not found")
    (fake := tmp_path / "fake.onnx").write_bytes(b"not a model")
    user_error(cli("run", fake, "--random"), "ONNX Runtime cannot load")


def test_empty_inputs_to_recurrent_models_are_refused_not_crashed(tmp_path):
    """ONNX Runtime's GRU/LSTM kernels abort the process on an empty batch or
    sequence; graphc refuses such inputs before they reach it."""
    spec = tmp_path / "gru.yaml"
    spec.write_text("graphc: 1\ndims: {batch: 2, seq: 3}\n"
                    "inputs: {x: {dtype: float32, shape: [batch, seq, 4]}}\n"
                    "layers: [{name: rnn, kind: gru, input: x, hidden_size: 5, batch_first: true}]\n"
                    "outputs: {y: rnn}\n")
    for dim in ("batch=0", "seq=0"):
        r = graphc_cli("run", str(spec), "--random", "--dim", dim)      # a crash here would be rc -6/-11
        user_error(r, "GRU")
        assert r.stderr.startswith("graphc: error: input 'x' is empty"), r.stderr
    assert cli("run", spec, "--random", "--dim", "seq=1")[0] == 0


def test_run_time_failures_are_one_clean_message(tmp_path):
    """An input ONNX Runtime rejects is reported once, by graphc: no ORT log
    line (with terminal colour codes) before it."""
    spec = tmp_path / "s.yaml"
    spec.write_text(TINY.replace("{name: act, kind: relu, input: fc}",
                                 "{name: act, kind: embedding, input: ids, num_embeddings: 5, embedding_dim: 2}")
                    .replace("outputs: {y: act}", "outputs: {y: act, z: fc}")
                    .replace("  x: {dtype: float32, shape: [batch, 4]}\n",
                             "  x: {dtype: float32, shape: [batch, 4]}\n  ids: {dtype: int64, shape: [batch]}\n"))
    np.save(x := tmp_path / "x.npy", np.zeros((2, 4), np.float32))
    np.save(ids := tmp_path / "ids.npy", np.array([1, 99], np.int64))      # 99 is out of the table
    r = graphc_cli("run", str(spec), "--input", f"x={x}", "--input", f"ids={ids}")
    user_error(r, "input 'ids' has 99")     # graphc's own check (graphc.ir.run_limits) says it first
    assert r.stderr.startswith("graphc: error: input 'ids' has 99 at [1], outside [0, 5)"), r.stderr
    # without the recorded limits (a model from elsewhere), ONNX Runtime's refusal is the message
    import onnx
    assert graphc_cli("build", str(spec), "-o", str(model := tmp_path / "m.onnx")).returncode == 0
    m = onnx.load(str(model))
    kept = [p for p in m.metadata_props if p.key != "graphc.run_limits"]
    del m.metadata_props[:]
    m.metadata_props.extend(kept)
    onnx.save(m, str(model))
    r = graphc_cli("run", str(model), "--input", f"x={x}", "--input", f"ids={ids}")
    user_error(r, "ONNX Runtime failed")
    assert r.stderr.startswith("graphc: error: ONNX Runtime failed") and "\x1b" not in r.stderr


def test_absurd_thread_counts_are_refused(tiny_model):
    user_error(cli("run", tiny_model, "--random", "--threads", "100000"), "--threads must be between")


def test_inputs_must_agree_on_a_dim(tmp_path):
    spec = tmp_path / "two.yaml"
    spec.write_text(TINY.replace("  x: {dtype: float32, shape: [batch, 4]}\n",
                                 "  x: {dtype: float32, shape: [batch, 4]}\n  z: {dtype: float32, shape: [batch, 4]}\n")
                    .replace("{name: act, kind: relu, input: fc}", "{name: act, kind: add, inputs: [x, z]}"))
    np.save(x := tmp_path / "x.npy", np.zeros((2, 4), np.float32))
    np.save(z := tmp_path / "z.npy", np.zeros((3, 4), np.float32))
    user_error(cli("run", spec, "--input", f"x={x}", "--input", f"z={z}"), "dim 'batch' is 2")


# ------------------------------------------------------------------ outputs

def test_output_over_an_input_is_refused(tiny, tmp_path):
    before = tiny.read_bytes()
    user_error(cli("build", tiny, "-o", tiny), "refusing to write the output over the input")
    (link := tmp_path / "link.onnx").symlink_to(tiny)
    user_error(cli("build", tiny, "-o", link), "refusing to write the output over the input")
    np.savez(w := tmp_path / "w.npz", **TINY_WEIGHTS)
    user_error(cli("build", tiny, "-o", w, "--weights", w), "refusing to write the output over the input")
    assert tiny.read_bytes() == before


def test_output_over_an_included_file_is_refused(tmp_path):
    (lib := tmp_path / "lib.yaml").write_text(BLOCK)
    (spec := tmp_path / "main.yaml").write_text(_main_spec("lib.yaml"))
    user_error(cli("build", spec, "-o", lib), "refusing to write the output over the input")
    assert lib.read_text() == BLOCK


def test_output_where_it_cannot_go(tiny, tmp_path):
    t0 = time.perf_counter()
    user_error(cli("build", tiny, "-o", tmp_path / "no" / "such" / "dir.onnx"), "does not exist")
    user_error(cli("build", tiny, "-o", tmp_path), "is a directory")
    assert time.perf_counter() - t0 < 2


def test_run_output_is_checked_and_atomic(tiny_model, tmp_path):
    user_error(cli("run", tiny_model, "--random", "--output", tmp_path / "no" / "o.npz"), "does not exist")
    user_error(cli("run", tiny_model, "--random", "--output", tiny_model), "over the input")
    assert cli("run", tiny_model, "--random", "--output", tmp_path / "o.npz")[0] == 0
    assert np.load(tmp_path / "o.npz")["y"].shape == (2, 3)
    assert no_temp_files(tmp_path)


@pytest.mark.parametrize("spec_text, message", [
    (TINY.replace("kind: relu", "kind: rleu"), "unknown layer kind 'rleu'"),                  # spec error
    (TINY.replace("[batch, 4]", "[batch, 4"), "malformed YAML"),
    (TINY.replace("out_features: 3", "out_features: 3000000000"), "'out_features' of layer 'fc'"),  # absurd width
])
def test_failed_build_keeps_the_earlier_output(tmp_path, spec_text, message):
    spec, out = tmp_path / "s.yaml", tmp_path / "model.onnx"
    spec.write_text(spec_text)
    out.write_bytes(b"precious")
    user_error(cli("build", spec, "-o", out), message, located=spec)
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "s.yaml"]


def test_interrupt_while_writing_leaves_no_partial_file(tiny, tmp_path, monkeypatch):
    """Ctrl-C arriving while the model is written: the temporary file is
    removed and the earlier output survives (deterministic: KeyboardInterrupt
    is raised from inside save_model, at the rename)."""
    out = tmp_path / "model.onnx"
    out.write_bytes(b"precious")

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "replace", interrupted)
    rc, _, err = cli("build", tiny, "-o", out)
    monkeypatch.undo()
    assert rc == 130 and "interrupted" in err and "Traceback" not in err
    assert out.read_bytes() == b"precious"
    assert no_temp_files(tmp_path)


def test_ctrl_c_between_model_and_data_renames_is_deferred(tmp_path, monkeypatch):
    """The >2 GB path puts a model and its '.data' file in place with two
    renames. A real SIGINT arriving between them is held until both are done,
    so the pair on disk is never an old model with new data."""
    import onnx
    from graphc.lower import model as lower_model
    spec = tmp_path / "s.yaml"
    spec.write_text(TINY.replace("out_features: 3", "out_features: 300"))
    out = tmp_path / "model.onnx"
    monkeypatch.setattr(lower_model, "EXTERNAL_DATA_THRESHOLD", 1)
    real_replace = os.replace
    renames = []

    def signal_after_first_rename(a, b):
        real_replace(a, b)
        renames.append(b)
        if len(renames) == 1:
            os.kill(os.getpid(), signal.SIGINT)     # Ctrl-C right between the two renames
    monkeypatch.setattr(os, "replace", signal_after_first_rename)
    rc, _, err = cli("build", spec, "-o", out)
    monkeypatch.undo()
    assert rc == 130, err
    assert len(renames) == 2, "the interrupt was delivered before the second rename"
    model = onnx.load(str(out))          # loads the external data beside it: the pair is consistent
    assert model.graph.node and (tmp_path / "model.onnx.data").exists()
    assert no_temp_files(tmp_path)


SIGINT_DRIVER = "import sys, graphc.cli as c; print('ready', flush=True); c.run()"   # the graphc script's entry


def _interrupt_build(spec: Path, out: Path, trigger) -> tuple[int, str]:
    p = subprocess.Popen([sys.executable, "-c", SIGINT_DRIVER, "build", str(spec), "-o", str(out), "-q"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    trigger(p)
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    return p.returncode, err


def test_ctrl_c_during_a_real_build(tmp_path):
    """A real SIGINT to a real build, twice: once the moment the temporary
    output appears (mid-write), once a moment into the compile. Either way the
    earlier output is intact (or, if the build won the race, complete) and no
    temporary file remains."""
    spec = tmp_path / "big.yaml"
    spec.write_text(TINY.replace("[batch, 4]", "[batch, 2048]").replace("out_features: 3", "out_features: 6000"))
    out = tmp_path / "model.onnx"

    def when_temp_appears(p):
        deadline = time.monotonic() + 60
        while p.poll() is None and time.monotonic() < deadline:
            if not no_temp_files(tmp_path):
                return
            time.sleep(0.0005)

    def shortly_after_start(p):
        time.sleep(0.05)            # the build takes ~0.3 s: land inside the compile

    codes = []
    for trigger in (when_temp_appears, shortly_after_start):
        out.write_bytes(b"precious")
        rc, err = _interrupt_build(spec, out, trigger)
        codes.append(rc)
        assert "Traceback" not in err, err
        # -SIGINT: the build won the race and the signal arrived while the
        # interpreter was shutting down (default handlers restored): harmless
        assert rc in (0, 130, -signal.SIGINT), err
        if rc == 130:
            assert out.read_bytes() == b"precious"
        else:
            assert out.read_bytes()[:2] != b"pr" and out.stat().st_size > 40_000_000
        assert no_temp_files(tmp_path), list(tmp_path.iterdir())
    assert 130 in codes, "neither interrupt landed during the build"


# ------------------------------------------------------------------ determinism

DETERMINISM_DRIVER = """
import contextlib, io, sys
from pathlib import Path
from graphc.cli import main
out = Path(sys.argv[1])
for spec in sys.argv[2:]:
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(["build", spec, "-o", str(out / (Path(spec).stem + ".onnx")), "-q"])
    assert rc == 0, spec
"""
LIGHT_PARAMS = 10_000_000


def _light_specs() -> list[Path]:
    from graphc.compiler import check_spec
    light = []
    for p in sorted(SPECS.rglob("*.yaml")):
        _, g = check_spec(p)
        if sum(int(np.prod(v.type.concrete_shape())) for v in g.params()) <= LIGHT_PARAMS:
            light.append(p)
    return light


def test_builds_are_byte_identical_across_runs_and_hash_seeds(tmp_path):
    specs = _light_specs()
    assert specs
    outputs = {}
    for hash_seed in ("0", "12345", "random"):
        d = tmp_path / hash_seed
        d.mkdir()
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        r = subprocess.run([sys.executable, "-c", DETERMINISM_DRIVER, str(d), *map(str, specs)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        outputs[hash_seed] = {p.name: p.read_bytes() for p in sorted(d.iterdir())}
    assert len(outputs["0"]) == len(specs)
    for name, data in outputs["0"].items():
        assert outputs["12345"][name] == data, f"{name} differs between PYTHONHASHSEED 0 and 12345"
        assert outputs["random"][name] == data, f"{name} differs between PYTHONHASHSEED 0 and random"


def test_in_memory_specs_cannot_include():
    user_error(lambda: parse_spec_text("graphc: 1\ninclude: x.yaml\n"), "includes need a spec file on disk")
