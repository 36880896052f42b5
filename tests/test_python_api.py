"""graphc as a library (docs/python.md): the entry points on the package, the docs'
```python block run as written, errors as GraphcError with nothing printed and the
process left as found, weights as arrays of any layout, and threads (one Generator
serving several at once, against the toy bundle's numpy reference)."""
from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

import graphc
from graphc.generation.search import beam_search, greedy_or_sample

import generation_toy as toy
from helpers import ROOT, SPECS

DOC = ROOT / "docs" / "python.md"


def test_the_package_names_its_entry_points_and_imports_nothing_heavy():
    import graphc.compiler
    import graphc.generation.api
    import graphc.generation.bundle_write
    assert graphc.compile_spec is graphc.compiler.compile_spec
    assert graphc.Compiled is graphc.compiler.Compiled
    assert graphc.build_bundle is graphc.generation.bundle_write.build_bundle
    assert graphc.generate is graphc.generation.api.generate
    assert graphc.Generator is graphc.generation.api.Generator
    assert set(graphc.__all__) <= set(dir(graphc))
    for name in graphc.__all__:
        assert name in graphc.__doc__, name        # help(graphc) says where to start
    with pytest.raises(AttributeError):
        graphc.no_such_name
    code = "import sys, graphc; print(sorted(m for m in ('numpy', 'onnx', 'onnxruntime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True).stdout
    assert out.strip() == "[]"


def _doc_python_block() -> str:
    blocks = re.findall(r"^```python\n(.*?)^```$", DOC.read_text(encoding="utf-8"), re.S | re.M)
    assert len(blocks) == 1
    return blocks[0]


def _gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def test_docs_python_block_runs_as_written(tmp_path, monkeypatch, capfd):
    (tmp_path / "specs").mkdir()
    for name in ("mlp.yaml", "gpt_decoder_only.yaml"):
        shutil.copy(SPECS / name, tmp_path / "specs" / name)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(_doc_python_block(), str(DOC), "exec"), ns)
    assert capfd.readouterr() == ("", "")                     # a library call prints nothing
    # the MLP against numpy from the math (float64 weights, float32 model)
    w, x = ns["weights"], ns["x"].astype(np.float64)
    want = _gelu(x @ w["fc1.weight"].T + w["fc1.bias"]) @ w["fc2.weight"].T + w["fc2.bias"]
    np.testing.assert_allclose(ns["logits"], want, rtol=1e-4, atol=1e-4)
    assert (tmp_path / "mlp.onnx").read_bytes() == ns["model"].to_bytes()
    assert "do not match" in ns["problem"]
    # greedy ids against the uncached model: each generated id is the argmax after the ids before it
    ids = ns["ids"]
    assert ids.dtype == np.int64 and ids.shape[0] == 1 and 1 <= ids.shape[1] <= 8
    np.testing.assert_array_equal(ns["again"], ids)
    import onnxruntime as ort
    full = graphc.compile_spec("specs/gpt_decoder_only.yaml", seed=0).to_bytes()
    seq = np.array([[5, 9, 13, *ids[0, :-1]]], dtype=np.int64)
    scores, = ort.InferenceSession(full, providers=["CPUExecutionProvider"]).run(["logits"], {"tokens": seq})
    np.testing.assert_array_equal(scores[0, 2:].argmax(-1), ids[0])


def test_readme_links_the_python_page():
    assert "docs/python.md" in (ROOT / "README.md").read_text(encoding="utf-8")


def _process_state():
    return (np.geterr(), list(warnings.filters), {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)},
            os.getcwd(), dict(os.environ), sys.unraisablehook)


def test_library_errors_print_nothing_and_leave_the_process_as_found(tmp_path, capfd):
    before = _process_state()
    with pytest.raises(graphc.GraphcError) as e:
        graphc.compile_spec(ROOT / "tests" / "errors" / "cycle.yaml")
    assert e.value.span is not None and str(e.value).startswith(str(e.value.span))
    with pytest.raises(graphc.GraphcError):
        graphc.compile_spec(SPECS / "mlp.yaml", weights=tmp_path / "absent.safetensors")
    (tmp_path / "m.onnx").write_bytes(b"earlier")
    model = graphc.compile_spec(SPECS / "mlp.yaml", keep_weights=False)

    def refuse(path):
        raise graphc.GraphcError("refused")
    with pytest.raises(graphc.GraphcError):
        model.save(tmp_path / "m.onnx", verify=refuse)
    assert (tmp_path / "m.onnx").read_bytes() == b"earlier" and os.listdir(tmp_path) == ["m.onnx"]
    bundle = toy.write_bundle(tmp_path / "toy")
    with pytest.raises(graphc.GraphcError, match="outside the vocabulary"):
        graphc.generate(bundle, [[3, toy.V]])
    assert capfd.readouterr() == ("", "")
    assert _process_state() == before


def test_library_leaves_the_onnxruntime_default_logger_alone(tmp_path):
    """ORT's default logger severity is process-wide and cannot be read back; graphc
    used to set it to fatal-only in every make_session, so after graphc.generate a
    script's own sessions printed none of their warnings. Checked in a fresh process
    (the in-process CLI tests set it, as the command may)."""
    code = (
        "import numpy as np, sys, onnx\n"
        "from onnx import helper, numpy_helper, TensorProto as T\n"
        "import onnxruntime as ort\n"
        "from graphc.runtime import make_session\n"
        "v = lambda n: helper.make_tensor_value_info(n, T.FLOAT, [2])\n"
        "g = helper.make_graph([helper.make_node('Identity', ['x'], ['y'])], 'g', [v('x')], [v('y')],\n"
        "                      [numpy_helper.from_array(np.zeros(2, np.float32), 'unused')])\n"
        "m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)]); m.ir_version = 8\n"
        "make_session(m.SerializeToString())\n"
        "print('--- graphc session made', file=sys.stderr, flush=True)\n"
        "ort.InferenceSession(m.SerializeToString(), providers=['CPUExecutionProvider'])\n")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True).stderr
    mine, theirs = err.split("--- graphc session made")
    assert "unused" not in mine                     # graphc's own session: quiet
    assert "Removing initializer 'unused'" in theirs     # the caller's: ORT's default warnings


PROMPTS = [np.array([[0, 0, 3, 4, 5], [6, 7, 8, 9, 10]]), np.array([[11, 12, 13, 14, 15], [0, 0, 0, 16, 17]]),
           np.array([[18, 19, 3, 5, 7], [0, 9, 11, 13, 15]]), np.array([[4, 4, 4, 4, 4], [0, 0, 0, 0, 19]])]


def _reference(prompt, beams):
    ref = toy.ReferenceStepModel(toy.toy_weights())
    mask = (np.cumsum(prompt != toy.PAD, 1) > 0).astype(np.int64)
    common = dict(max_new_tokens=10, eos=(toy.EOS,), pad=toy.PAD)
    return (beam_search(ref, prompt, mask, num_beams=beams, length_penalty=1.0, early_stopping=False, **common)
            if beams > 1 else greedy_or_sample(ref, prompt, mask, **common))


def test_one_generator_serves_several_threads(tmp_path):
    """Before: the decoder's caches and mask lived on the shared runner, so two threads
    overwrote each other's and ORT failed on mismatched shapes (or, worse, decoded
    with another request's cache)."""
    gen = graphc.Generator(toy.write_bundle(tmp_path / "toy"), threads=1)
    jobs = [(p, beams) for p in PROMPTS for beams in (1, 3)]
    want = [_reference(p, beams) for p, beams in jobs]
    failures: list = []

    def work(k):
        try:
            for r in range(6):
                i = (k + r) % len(jobs)
                got = gen.generate(jobs[i][0], max_new_tokens=10, num_beams=jobs[i][1])
                if not np.array_equal(got, want[i]):
                    failures.append((k, i, got))
        except Exception as exc:                    # noqa: BLE001 (reported below)
            failures.append((k, repr(exc)[:300]))
    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:2]
    with pytest.raises(graphc.GraphcError):          # an error, then the same Generator again
        gen.generate([[3, toy.V + 5]])
    np.testing.assert_array_equal(gen.generate(PROMPTS[0], max_new_tokens=10), want[0])


TIED = """graphc: 1
name: tiny
dims: {batch: 2}
inputs:
  x: {dtype: float32, shape: [batch, 6]}
layers:
  - {name: fc1, kind: linear, input: x, out_features: 5}
  - {name: fc2, kind: linear, input: fc1, out_features: 3}
outputs:
  y: fc2
"""


def test_weights_of_any_layout_give_the_same_model_and_stay_unmodified(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TIED)
    rng = np.random.default_rng(1)
    base = {"fc1.weight": rng.standard_normal((5, 6)), "fc1.bias": rng.standard_normal(5),
            "fc2.weight": rng.standard_normal((3, 5)), "fc2.bias": rng.standard_normal(3)}
    want = graphc.compile_spec(spec, {k: v.astype(np.float32) for k, v in base.items()}).to_bytes()
    readonly = {k: v.astype(np.float32) for k, v in base.items()}
    for v in readonly.values():
        v.flags.writeable = False
    np.savez(tmp_path / "w.npz", **{k: v.astype(np.float32) for k, v in base.items()})
    mapped = {}
    for k, v in base.items():
        np.save(tmp_path / f"{k}.npy", v.astype(np.float32))
        mapped[k] = np.load(tmp_path / f"{k}.npy", mmap_mode="r")
    forms = {"float64": base, "fortran": {k: np.asfortranarray(v.astype(np.float32)) for k, v in base.items()},
             "strided": {k: np.repeat(v.astype(np.float32)[..., None], 2, -1)[..., 0] for k, v in base.items()},
             "read-only": readonly, "memory-mapped": mapped}
    for name, weights in forms.items():
        kept = {k: np.array(v) for k, v in weights.items()}
        for keep in (True, False):
            assert graphc.compile_spec(spec, weights, keep_weights=keep).to_bytes() == want, name
        assert graphc.compile_spec(spec, weights, dtype="float16").to_bytes()
        assert all(np.array_equal(weights[k], kept[k]) for k in kept), name
    assert graphc.compile_spec(spec, tmp_path / "w.npz").to_bytes() == want
    assert graphc.compile_spec(spec, str(tmp_path / "w.npz")).to_bytes() == want


def test_compiles_in_several_threads_match_one_at_a_time(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TIED)
    want = {seed: graphc.compile_spec(spec, seed=seed).to_bytes() for seed in range(4)}
    got: dict = {}

    def work(seed):
        model = graphc.compile_spec(spec, seed=seed, keep_weights=False)
        model.save(tmp_path / f"m{seed}.onnx")            # from a thread: no signal handlers touched
        got[seed] = (tmp_path / f"m{seed}.onnx").read_bytes()
    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want
    assert len(set(want.values())) == 4


@pytest.mark.parametrize("kw", [{}, {"dtype": "float16"}, {"quantize": "int8"}], ids=["float32", "float16", "int8"])
def test_a_compiled_model_gives_the_cli_bytes_whether_or_not_it_keeps_its_weights(tmp_path, kw):
    """Before: compile_spec's default (weights in the proto) gave to_bytes() in protobuf's
    field order and save() in a third order, neither equal to `graphc build`'s file
    (weights streamed after the graph): one spec and seed, three different .onnx files."""
    from graphc.cli import main
    spec = SPECS / "mha.yaml"
    assert main(["build", str(spec), "-o", str(tmp_path / "cli.onnx"), "-q",
                 *(["--dtype", kw["dtype"]] if "dtype" in kw else []),
                 *(["--quantize", kw["quantize"]] if "quantize" in kw else [])]) == 0
    want = (tmp_path / "cli.onnx").read_bytes()
    for keep in (True, False):
        model = graphc.compile_spec(spec, keep_weights=keep, **kw)
        assert model.to_bytes() == want, keep
        model.save(tmp_path / "api.onnx")
        assert (tmp_path / "api.onnx").read_bytes() == want, keep
    import onnx
    kept = graphc.compile_spec(spec, **kw).model
    assert onnx.load_from_string(want) == kept         # the same model, weights included
