"""Property-based fuzzing of the example specs (hypothesis).

Every spec under specs/ is mutated (values, keys, structure, types, raw text)
and run through ``graphc check`` and, when it still checks and is light,
``graphc build``, in-process through ``graphc.cli.main``. The property: the
outcome is success (exit 0) or a user error (exit 2) whose first line is a
located ``path:line:col: error:`` (or ``graphc: error:`` for errors that are
not about a place in the spec) -- never an internal error (exit 1), never a
traceback, never a hang, and a failed build leaves the earlier output intact.

CI runs a bounded, derandomized pass (about 5,000 examples, a minute). A long
run (examples per spec)::

    GRAPHC_FUZZ_EXAMPLES=20000 python -m pytest tests/test_fuzz.py -x

``GRAPHC_FUZZ_SEED=<n>`` (n > 0) draws other, random examples;
``GRAPHC_FUZZ_DEADLINE`` changes the 5 s bound per example. A failure prints
the mutated spec text, which reproduces it with ``graphc check``. See
docs/reliability.md.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from graphc.layers import LAYERS
from helpers import SPECS, cli

FUZZ_SEED = int(os.environ.get("GRAPHC_FUZZ_SEED", "0"))
ALL = sorted(SPECS.rglob("*.yaml"))
# CI: about 5,000 examples shared among the example specs (roughly a minute,
# however many specs there are); GRAPHC_FUZZ_EXAMPLES sets the count per spec
EXAMPLES = int(os.environ.get("GRAPHC_FUZZ_EXAMPLES", max(20, 5000 // max(1, len(ALL)))))
# a mutated spec is built only while its parameters stay below this (builds of
# the big example models take seconds; their checks are still fuzzed)
BUILD_PARAMS = 10_000_000
BUDGET = "64M"                 # --max-param-bytes for fuzzed builds: mutations may inflate widths
DEADLINE_S = float(os.environ.get("GRAPHC_FUZZ_DEADLINE", "5"))   # per example (check + build)
HANG_S = 30.0                  # a hard stop, so a hang fails the test instead of stalling CI

LOCATED = re.compile(r"^(?P<path>[^\n]+?):(?P<line>\d+):(?P<col>\d+): error: ")
UNLOCATED = re.compile(r"^graphc: error: ")

# ------------------------------------------------------------------ values

NAMES = ["x", "y", "batch", "seq", "d_model", "heads", "fc1", "relu", "linear", "float32", "int64",
         "bool", "float16", "mask", "tokens", "ids", "a", "b", "inputs", "layers", "outputs"]

weird_scalars = st.one_of(
    st.sampled_from([0, -1, 1, 2, 3, 7, -7, 2 ** 31, 2 ** 31 + 1, 2 ** 63, -(2 ** 63), 10 ** 9, 10 ** 12,
                     10 ** 30, 1 << 20]),
    st.integers(min_value=-10 ** 6, max_value=10 ** 6),
    st.sampled_from([0.0, -0.0, 0.5, -2.5, 1e-30, 1e308, float("inf"), float("-inf"), float("nan"), 3.0]),
    st.sampled_from(["", " ", "-1", "0", "1e9", "d_model / 0", "d_model // 3", "batch * seq", "-batch",
                     "batch - batch", "(((1)))", "((", "1 +", "x.y", "x.", ".x", "a-b", "__init__",
                     "9" * 60, "é", "\t", "\\x00", "*", "&a", "!!int", "true", "null", "~", "[1", "{a: 1}"]),
    st.sampled_from(NAMES),
    st.text(max_size=12),
    st.none(),
    st.booleans(),
)
weird_values = st.one_of(
    weird_scalars,
    st.lists(weird_scalars, max_size=4),
    st.dictionaries(st.sampled_from(NAMES + ["name", "kind", "input", "shape", "dtype"]), weird_scalars,
                    max_size=3),
    st.builds(lambda: [[[[1]]]]),                 # fresh objects: mutations edit values in place
    st.builds(lambda: {"a": {"a": {"a": {}}}}),
)
GARBAGE = list(":[]{}-#&*!|>'\",%@`?\t\n \\") + ["\x00", "\u00e9", "\ufeff", "\r", "\u2028", ": ", "- ",
                                                 "&a ", "*a", "<<: ", "!!python/name:os.system "]


# ------------------------------------------------------------------ tree mutations

def _paths(tree, prefix=()):
    """Every (container path, key) in the tree, so a mutation can target any node."""
    out = []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.append(prefix + (k,))
            out.extend(_paths(v, prefix + (k,)))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out.append(prefix + (i,))
            out.extend(_paths(v, prefix + (i,)))
    return out


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


SMALL_INTS = [0, 1, 2, 3, 4, 5, 7, 8, 16, 17, 31, 32, 64, 100, 513, 1024]


def _mutate_tree(data, tree):
    paths = _paths(tree)
    if not paths:
        return tree
    # positions are drawn uniformly (hypothesis's own integers favour small values,
    # which would mutate the first keys of a spec far more than its layers)
    rnd = data.draw(st.randoms(use_true_random=False), label="positions")
    op = data.draw(st.sampled_from(["number", "number", "replace", "replace", "delete", "rename", "swap", "kind",
                                    "dim", "duplicate", "wrap", "graft"]), label="tree op")
    if op == "number":
        ints = [p for p in paths if isinstance(_get(tree, p), int) and not isinstance(_get(tree, p), bool)
                and p[0] != "graphc"]
        if ints:
            path = rnd.choice(ints)
            _get(tree, path[:-1])[path[-1]] = data.draw(st.one_of(st.sampled_from(SMALL_INTS), weird_scalars))
            return tree
        op = "replace"
    if op == "kind":
        holders = [p for p in paths if p[-1] == "kind"]
        if holders:
            path = rnd.choice(holders)
            new = data.draw(st.one_of(st.sampled_from(sorted(LAYERS)), st.text(max_size=8), weird_scalars))
            _get(tree, path[:-1])[path[-1]] = new
            return tree
        op = "replace"
    if op == "dim":
        holders = [p for p in paths if isinstance(_get(tree, p), str)
                   and _get(tree, p) in {"batch", "seq", "src_seq", "tgt_seq", "time", "steps"}]
        if holders:
            path = rnd.choice(holders)
            _get(tree, path[:-1])[path[-1]] = data.draw(st.sampled_from(["batch", "seq", "tgt_seq", "zzz", "1", 1]))
            return tree
        op = "replace"
    if op == "swap":
        lists = [p for p in paths if isinstance(_get(tree, p), list) and len(_get(tree, p)) >= 2]
        if lists:
            lst = _get(tree, rnd.choice(lists))
            i, j = rnd.randrange(len(lst)), rnd.randrange(len(lst))
            lst[i], lst[j] = lst[j], lst[i]
            return tree
        op = "replace"
    if op == "graft":
        # an argument of one layer given to another (valid YAML, plausible, often wrong)
        maps = [p for p in paths if isinstance(_get(tree, p), dict) and "kind" in _get(tree, p)]
        if len(maps) >= 2:
            src, dst = _get(tree, rnd.choice(maps)), _get(tree, rnd.choice(maps))
            key = rnd.choice(sorted(src, key=str))
            if key not in ("name",):
                dst[key] = _copy(src[key])
            return tree
        op = "replace"
    path = rnd.choice(paths)
    parent, key = _get(tree, path[:-1]), path[-1]
    if op == "delete":
        del parent[key]
    elif op == "rename" and isinstance(parent, dict):
        new = data.draw(st.one_of(st.sampled_from(NAMES + ["name", "kind", "input", "inputs", "repeat",
                                                           "shape", "dtype", "params", "dims"]),
                                  st.just(str(key)[:-1] or "k"), st.text(max_size=6)))
        if new not in parent:
            items = list(parent.items())
            parent.clear()
            parent.update({(new if k == key else k): v for k, v in items})
    elif op == "duplicate" and isinstance(parent, list):
        parent.insert(key, _copy(parent[key]))
    elif op == "wrap":
        v = parent[key]
        parent[key] = data.draw(st.sampled_from([[v], {"x": v}, [v, _copy(v)]]))
    else:
        parent[key] = data.draw(weird_values, label="value")
    return tree


def _copy(v):
    return yaml.safe_load(yaml.safe_dump(v))


def _dump(tree) -> str:
    return yaml.safe_dump(tree, sort_keys=False, allow_unicode=True, width=1 << 16)


# ------------------------------------------------------------------ text mutations

def _mutate_text(data, text: str) -> str:
    op = data.draw(st.sampled_from(["insert", "insert", "truncate", "dup_line", "del_line", "indent", "replace_char"]),
                   label="text op")
    if not text:
        return data.draw(st.sampled_from(GARBAGE))
    rnd = data.draw(st.randoms(use_true_random=False), label="positions")
    if op == "insert":
        pos = rnd.randrange(len(text) + 1)
        junk = "".join(data.draw(st.lists(st.sampled_from(GARBAGE), min_size=1, max_size=4)))
        return text[:pos] + junk + text[pos:]
    if op == "truncate":
        return text[:rnd.randrange(len(text) + 1)]
    if op == "replace_char":
        pos = rnd.randrange(len(text))
        return text[:pos] + data.draw(st.sampled_from(GARBAGE)) + text[pos + 1:]
    lines = text.split("\n")
    i = rnd.randrange(len(lines))
    if op == "dup_line":
        lines.insert(i, lines[i])
    elif op == "del_line":
        del lines[i]
    else:
        lines[i] = data.draw(st.sampled_from(["  ", " ", "\t", "- "])) + lines[i]
    return "\n".join(lines)


def mutate(data, text: str) -> str:
    tree = yaml.safe_load(text)
    n = data.draw(st.integers(1, 3), label="mutations")
    structural = data.draw(st.integers(0, 9), label="structural") < 7
    if structural and isinstance(tree, (dict, list)):
        for _ in range(n):
            tree = _mutate_tree(data, tree)
        text = _dump(tree)
        if data.draw(st.booleans(), label="then text"):
            text = _mutate_text(data, text)
        return text
    for _ in range(n):
        text = _mutate_text(data, text)
    return text


# ------------------------------------------------------------------ running

def assert_clean_outcome(args: list[str], rc: int, err: str, text: str, spec_path: Path) -> None:
    shown = f"graphc {' '.join(args)}\n--- stderr ---\n{err}\n--- spec ---\n{text}"
    assert rc in (0, 2), f"exit {rc} (1 = internal error):\n{shown}"
    assert "Traceback" not in err, shown
    if rc == 2:
        first = err.splitlines()[0] if err else ""
        m = LOCATED.match(first)
        if args[0] == "check" or m:
            # everything check can get wrong is about a place in the spec
            assert m, f"unlocated spec error:\n{shown}"
            assert Path(m["path"]).name == spec_path.name or Path(m["path"]).exists(), shown
            assert int(m["line"]) >= 1 and int(m["col"]) >= 1, shown
        else:
            assert UNLOCATED.match(first), f"unexpected error format:\n{shown}"


def _n_params(stdout: str) -> int:
    m = re.search(r"([\d,]+) parameters", stdout)
    return int(m.group(1).replace(",", "")) if m else 0


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("example", ALL, ids=[str(p.relative_to(SPECS)) for p in ALL])
def test_mutated_specs_fail_cleanly(example, workdir):
    original = example.read_text()
    spec_path = workdir / example.name
    out = workdir / (example.stem + ".onnx")

    @seed(FUZZ_SEED + sum(map(ord, example.name)))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=FUZZ_SEED == 0, database=None,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(st.data())
    def run(data):
        text = mutate(data, original)
        spec_path.write_text(text, encoding="utf-8", errors="surrogatepass")
        t0 = time.perf_counter()
        args = ["check", str(spec_path), "--max-param-bytes", BUDGET]
        rc, stdout, err = cli(*args, hang_s=HANG_S)
        assert_clean_outcome(args, rc, err, text, spec_path)
        if rc == 0 and _n_params(stdout) <= BUILD_PARAMS:
            out.write_bytes(b"earlier output")
            args = ["build", str(spec_path), "-o", str(out), "--max-param-bytes", BUDGET, "-q"]
            rc, _, err = cli(*args, hang_s=HANG_S)
            assert_clean_outcome(args, rc, err, text, spec_path)
            if rc != 0:
                assert out.read_bytes() == b"earlier output", "a failed build touched the earlier output"
        leftovers = [p.name for p in workdir.iterdir() if p.name.startswith(".graphc-")]
        assert not leftovers, f"temporary files left behind: {leftovers}"
        elapsed = time.perf_counter() - t0
        assert elapsed < DEADLINE_S, f"took {elapsed:.1f} s (bound {DEADLINE_S} s):\n{text}"

    run()


def test_fuzz_covers_the_examples():
    assert any(p.name == "mlp.yaml" for p in ALL)


# ------------------------------------------------------------------ issue 21: the new classes
# Three more properties, each with its own small budget (GRAPHC_FUZZ_EXAMPLES scales them too):
# a compiled model's graphc metadata and input dims edited into anything; specs whose
# params and sizes grow (bounded, located, within the deadline); masked attention at
# extreme finite values against the numpy reference.

SMALL_EXAMPLES = max(10, EXAMPLES // 2)

CONTRACT_MODEL = """graphc: 1
dims: {batch: 2, seq: {example: 3, max: 8}}
inputs:
  ids: {dtype: int64, shape: [batch, seq], range: [0, 10]}
  lengths: {dtype: int64, shape: [batch], range: [1, seq + 1]}
layers:
  - {name: emb, kind: embedding, input: ids, num_embeddings: 10, embedding_dim: 4}
  - {name: pe, kind: sinusoidal_pe, input: emb, max_len: 8}
  - {name: rnn, kind: lstm, inputs: {x: pe, lengths: lengths}, hidden_size: 3, batch_first: true}
outputs: {y: rnn}
"""
META_KEYS = ["graphc.run_limits", "graphc.dim_examples", "graphc.input_ranges", "graphc.sequence_lengths"]

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70), st.sampled_from([0, 1, 3, 8, -1]),
                      st.floats(allow_nan=False), st.text(max_size=8),
                      st.sampled_from(["seq", "seq + 1", "seq ** 2", "batch", "ids", "lengths", "emb", "rnn", ""]))
json_tree = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(
        ["dim_max", "ids", "steps", "seq", "batch", "ids", "lengths", "x", ""]), inner, max_size=3)), max_leaves=8)


def _meta_value(data) -> str:
    import json
    kind = data.draw(st.sampled_from(["tree", "tree", "text", "valid-ish"]), label="kind")
    if kind == "text":
        return data.draw(st.text(max_size=40), label="text")
    if kind == "valid-ish":
        return json.dumps({"dim_max": {"seq": [data.draw(st.integers(-5, 2 ** 65)), ""]},
                           "ids": {"ids": [data.draw(json_leaf), "emb"]},
                           "steps": {"lengths": [data.draw(json_leaf), "rnn"]}})
    return json.dumps(data.draw(json_tree, label="tree"))


@pytest.fixture(scope="module")
def contract_model(workdir):
    (workdir / "contract.yaml").write_text(CONTRACT_MODEL)
    rc, _, err = cli("build", workdir / "contract.yaml", "-o", workdir / "contract.onnx", hang_s=HANG_S)
    assert rc == 0, err
    return workdir / "contract.onnx"


def test_fuzzed_model_metadata_and_dims_fail_cleanly(contract_model, workdir):
    import onnx
    from onnx import helper
    base = onnx.load(str(contract_model))
    target = workdir / "edited.onnx"

    @seed(FUZZ_SEED + 21)
    @settings(max_examples=SMALL_EXAMPLES, deadline=None, derandomize=FUZZ_SEED == 0, database=None,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(st.data())
    def run(data):
        m = onnx.ModelProto()
        m.CopyFrom(base)
        props = {p.key: p.value for p in m.metadata_props}
        for key in data.draw(st.lists(st.sampled_from(META_KEYS), min_size=1, max_size=3, unique=True), label="keys"):
            if data.draw(st.integers(0, 9), label="delete") == 0:
                props.pop(key, None)
            else:
                props[key] = _meta_value(data)
        del m.metadata_props[:]
        helper.set_model_props(m, props)
        if data.draw(st.booleans(), label="edit a dim"):
            dim = m.graph.input[0].type.tensor_type.shape.dim[1]
            dim.dim_param = data.draw(st.sampled_from(["seq ** 2", "", "1e999", "a" * 300, "-seq", "seq/0",
                                                       "seq - seq", "(", "seq * 99999999999999999999"]), label="dim")
        onnx.save(m, str(target))
        for args in (["run", str(target), "--random"], ["run", str(target), "--random", "--dim", "seq=4"]):
            rc, _, err = cli(*args, hang_s=HANG_S)
            assert_clean_outcome(args, rc, err, str(props), target)

    run()


def _growth_spec(data) -> str:
    """Params that add, multiply and square the ones above them, sizes that
    multiply symbolic dims, and layers that concatenate a tensor with itself."""
    n = data.draw(st.integers(1, 60), label="params")
    params = [f"  p0: {data.draw(st.sampled_from([1, 2, 10, 4096, 2 ** 31, 2 ** 62]))}"]
    if data.draw(st.booleans(), label="squares"):            # each param the square of the one above
        params += [f"  p{i}: p{i - 1} * p{i - 1}" for i in range(1, n)]
    for i in range(len(params), n):
        a, b = (data.draw(st.integers(0, i - 1)) for _ in range(2))
        op = data.draw(st.sampled_from(["+", "*", "*", "//", "-", "square", "square"]))
        if op == "square":                                   # digits double each line, without bounds
            a, b, op = i - 1, i - 1, "*"
        params.append(f"  p{i}: p{a} {op} {'p' + str(b) if op != '//' else '(p' + str(b) + ' + 1)'}")
    width = data.draw(st.sampled_from(["3", f"p{n - 1}", f"p{data.draw(st.integers(0, n - 1))} // p0"]))
    factors = data.draw(st.integers(1, 9), label="factors")
    axis = " * ".join(data.draw(st.sampled_from(["(seq + 1)", "(seq + batch)", "seq", "2", "p0"]))
                      for _ in range(factors))
    layers = [f"  - {{name: l0, kind: linear, input: x, out_features: {width}}}"]
    for i in range(1, data.draw(st.integers(1, 80), label="concats")):
        layers.append(f"  - {{name: l{i}, kind: concat, inputs: [l{i - 1}, l{i - 1}], axis: 1}}")
    return ("graphc: 1\ndims: {batch: 2, seq: 3}\nparams:\n" + "\n".join(params) +
            f"\ninputs:\n  x: {{dtype: float32, shape: [batch, \"{axis}\", 4]}}\nlayers:\n" + "\n".join(layers) +
            f"\noutputs: {{y: l{len(layers) - 1}}}\n")


def test_growing_params_and_sizes_are_bounded(workdir):
    spec_path = workdir / "growth.yaml"

    @seed(FUZZ_SEED + 33)
    @settings(max_examples=SMALL_EXAMPLES, deadline=None, derandomize=FUZZ_SEED == 0, database=None,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(st.data())
    def run(data):
        text = _growth_spec(data)
        spec_path.write_text(text)
        t0 = time.perf_counter()
        args = ["check", str(spec_path), "--max-param-bytes", BUDGET]
        rc, _, err = cli(*args, hang_s=HANG_S)
        assert_clean_outcome(args, rc, err, text, spec_path)
        elapsed = time.perf_counter() - t0
        assert elapsed < DEADLINE_S, f"took {elapsed:.1f} s (bound {DEADLINE_S} s):\n{text}"

    run()


@pytest.fixture(scope="module")
def attention_sessions():
    """Decomposed (opset 17) and opset-23 'auto' SDPA with a key-padding mask, float32 and float16."""
    import onnxruntime as ort
    from helpers import compile_text, single_layer_spec
    out = {}
    for dtype in ("float32", "float16"):
        for opset in (17, 23):
            for causal in (False, True):
                inputs = {n: (dtype, ["batch", 2, "seq", 4]) for n in "qkv"}
                inputs["p"] = ("bool", ["batch", "seq"])
                text = single_layer_spec("scaled_dot_product_attention", {"causal": causal, "scale": 1.0}, inputs,
                                         dims=("batch", "seq"),
                                         ports={"q": "q", "k": "k", "v": "v", "key_padding_mask": "p"})
                model, _, _ = compile_text(text, opset=opset)
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = 1
                out[dtype, opset, causal] = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    return out


def test_masked_attention_at_extreme_values_matches_the_reference(attention_sessions):
    import numpy as np
    from graphc.prims.attention_core import attention_reference

    @seed(FUZZ_SEED + 5)
    @settings(max_examples=SMALL_EXAMPLES * 2, deadline=None, derandomize=FUZZ_SEED == 0, database=None,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(st.data())
    def run(data):
        dtype = data.draw(st.sampled_from(["float32", "float16"]), label="dtype")
        opset, causal = data.draw(st.sampled_from([17, 23])), data.draw(st.booleans())
        b, s = data.draw(st.integers(1, 3), label="batch"), data.draw(st.integers(1, 5), label="seq")
        exponent = data.draw(st.sampled_from([0, 0.5, 1, 2, 4, 10, 30, 37, 38, 38.3, 38.5] if dtype == "float32"
                                             else [0, 0.5, 1, 2, 3, 4, 4.5, 4.8]), label="log10 |score|")
        rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))
        # q one-hot: each score is exactly one entry of k, so the extremes are the scores themselves
        q = np.zeros((b, 2, s, 4), dtype)
        q[..., 0] = 1
        k = (rng.uniform(-1, 1, (b, 2, s, 4)) * 10.0 ** exponent).astype(dtype)
        v = rng.standard_normal((b, 2, s, 4)).astype(dtype)
        pad = rng.random((b, s)) < data.draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]), label="padding")
        if data.draw(st.booleans(), label="adversarial"):
            # padded keys score highest, the rest near the lowest: a finite fill loses to them
            big = 10.0 ** exponent
            k[..., 0] = np.where(pad[:, None, :], big, -big * rng.uniform(0.1, 1, (b, 2, s))).astype(dtype)
        sess = attention_sessions[dtype, opset, causal]
        got = sess.run(None, {"q": q, "k": k, "v": v, "p": pad})[0]
        masked = pad[:, None, None, :] | (~np.tril(np.ones((s, s), bool)) if causal else False)
        want = attention_reference(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), masked=masked)
        shown = f"{dtype} opset {opset} causal {causal} 10**{exponent:.1f}\nk={k}\npad={pad}\ngot={got}\nwant={want}"
        assert np.all(np.isfinite(got)), shown
        fully = masked.all(-1) if np.ndim(masked) == 4 else np.zeros((b, 1, s), bool)
        assert np.all(got[np.broadcast_to(fully, got.shape[:3])] == 0), shown
        # a masked key's weight would pull the output towards its value: compare with the reference
        # (float16 rounds the scores themselves, so near-ties may pick another key's value)
        tol = 1e-5 if dtype == "float32" else 2e-2
        close = np.abs(got.astype(np.float64) - want) <= tol + tol * np.abs(want)
        if dtype == "float32" or exponent < 2:
            assert close.all(), shown

    run()
