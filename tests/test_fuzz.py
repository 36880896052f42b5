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

import contextlib
import io
import os
import re
import signal
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from graphc.cli import main
from graphc.layers import LAYERS
from helpers import SPECS

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

class _Hang(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Hang()


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """graphc.cli.main in-process, with output captured and a hard time bound."""
    out, err = io.StringIO(), io.StringIO()
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_S)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(args)
            except SystemExit as exc:          # argparse
                rc = exc.code if isinstance(exc.code, int) else 2
    except _Hang:
        pytest.fail(f"graphc {' '.join(args)} ran for more than {HANG_S} s")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return rc, out.getvalue(), err.getvalue()


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
        rc, stdout, err = run_cli(args)
        assert_clean_outcome(args, rc, err, text, spec_path)
        if rc == 0 and _n_params(stdout) <= BUILD_PARAMS:
            out.write_bytes(b"earlier output")
            args = ["build", str(spec_path), "-o", str(out), "--max-param-bytes", BUDGET, "-q"]
            rc, _, err = run_cli(args)
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
