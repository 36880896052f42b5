"""Spec errors found by an adversarial sweep: each is a user error (exit code 2),
located at its real culprit, says what is wrong (never "did you mean" the name
itself), and never shows a traceback or an internal error."""
from __future__ import annotations

import os
import threading

import pytest

from helpers import cli, user_error
from graphc.errors import GraphcError
from graphc.source import MAX_SPEC_BYTES
from graphc.specfile import parse_spec_text

SPEC = """graphc: 1
dims: {batch: 2, seq: 4}
params: {PARAMS}
inputs:
  x: {dtype: float32, shape: [batch, seq, 8]}
layers:
  - {name: fc, kind: linear, input: x, out_features: d}
outputs: {y: fc}
"""




def check_refused(path, message: str, where: str | None = None, *args) -> str:
    """Runs `graphc check PATH`: a user error (helpers.user_error) located at
    WHERE ('LINE:COL') when given, with MESSAGE in its first line. Returns stderr."""
    err = user_error(cli("check", path, *args), message, located=str(path) if where else None, where=where)
    assert message in err.splitlines()[0], err
    return err


def write(tmp_path, text: str, name: str = "m.yaml"):
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8", newline="")
    return p


def spec_error(text: str) -> GraphcError:
    return user_error(lambda: parse_spec_text(text, "<t>"), "")


# ------------------------------------------------------------------ 1. params that do not parse

@pytest.mark.parametrize("value, reason", [
    ("2 ** 3", "'**' (power) is not an operator"),
    ("3 +", "ends too early"),
    ("hidden +* 2", "unexpected '*'"),
    ("+".join(["1"] * 200), "longer than 256 characters"),
    ("(" * 60 + "1" + ")" * 60, "nested more than 50 levels"),
], ids=["power", "ends-early", "two-operators", "too-long", "too-deep"])
def test_a_param_that_looks_like_arithmetic_but_does_not_parse_is_an_error_at_the_param(tmp_path, value, reason):
    p = write(tmp_path, SPEC.replace("{PARAMS}", f"{{hidden: 4, d: {value}}}"))
    err = check_refused(p, "parameter 'd': ", "3:24")
    assert reason in err.splitlines()[0]
    assert "not a number" not in err


def test_text_params_are_still_text(tmp_path):
    p = write(tmp_path, SPEC.replace("{PARAMS}", "{d: 8, activation: gelu, note: True = padding}"))
    rc, _, err = cli("check", p)
    assert rc == 0, err


def test_a_param_using_one_defined_below_it_says_so(tmp_path):
    p = write(tmp_path, SPEC.replace("{PARAMS}", "{d: e, e: 8}"))
    err = check_refused(p, "parameter 'd' uses 'e', which is defined below it", "3:13")
    assert "move 'e' above 'd'" in err
    p = write(tmp_path, SPEC.replace("{PARAMS}", "{d: 2 * e, e: 8}"))
    check_refused(p, "parameter 'd' uses 'e', which is defined below it", "3:13")


# ------------------------------------------------------------------ 2. never "did you mean" the name itself

def test_a_null_param_has_no_value_not_an_unknown_name(tmp_path):
    p = write(tmp_path, SPEC.replace("{PARAMS}", "{d: null}"))
    err = check_refused(p, "'d' has no value", "7:54")
    assert "did you mean" not in err and "unknown name" not in err


def test_a_symbolic_dim_where_a_fixed_integer_is_needed(tmp_path):
    text = SPEC.replace("{PARAMS}", "{d: 8}").replace(
        "- {name: fc, kind: linear, input: x, out_features: d}",
        "- {name: s, kind: split, input: x, axis: 1, sizes: [seq, seq]}").replace("{y: fc}", "{y: s.y0}")
    err = check_refused(write(tmp_path, text), "'seq' is a symbolic dim", "7:55")
    assert "did you mean" not in err and "unknown name" not in err


def test_did_you_mean_never_suggests_the_word_itself():
    from graphc.errors import did_you_mean
    assert did_you_mean("seq", ["seq", "batch"]) is None
    assert did_you_mean("sq", ["seq", "batch"]) == "did you mean 'seq'?"


def test_a_text_param_in_an_input_range_is_not_an_unknown_name():
    text = SPEC.replace("{PARAMS}", "{d: 8, act: gelu}").replace(
        "x: {dtype: float32, shape: [batch, seq, 8]}",
        "x: {dtype: float32, shape: [batch, seq, 8]}\n  t: {dtype: int64, shape: [batch], range: [0, act + 1]}")
    e = spec_error(text)
    assert "'act' is the text 'gelu', not a number" in e.message and "did you mean" not in str(e)
    assert (e.span.line, e.span.col) == (6, 48)


# ------------------------------------------------------------------ 3. '/' on a symbolic dim

def test_dividing_a_symbolic_dim_says_it_is_symbolic(tmp_path):
    p = write(tmp_path, SPEC.replace("{PARAMS}", "{d: 8}").replace("[batch, seq, 8]", "[batch, seq / 2, 8]"))
    err = check_refused(p, "seq is a symbolic dim, which cannot be divided by 2", "5:38")
    assert "does not divide exactly" not in err
    assert "declare a dim of its own" in err
    # a factor the dim is known to have divides fine
    p = write(tmp_path, SPEC.replace("{PARAMS}", "{d: 8}").replace("[batch, seq, 8]", "[batch, (2 * seq) / 2, 8]"))
    assert cli("check", p)[0] == 0


# ------------------------------------------------------------------ 4, 5. characters and line numbers

def test_a_control_character_is_reported_where_it_is(tmp_path):
    text = SPEC.replace("{PARAMS}", "{d: 8}").replace("layers:\n", 'doc: "a\x07b"\nlayers:\n')
    assert text.splitlines()[5] == 'doc: "a\x07b"'
    err = check_refused(write(tmp_path, text), "the control character U+0007 is not allowed", "6:8")
    assert "unicode string" not in err and "position" not in err
    assert '  doc: "a?b"' in err.splitlines()        # quoted visibly, caret under it
    assert err.splitlines()[2] == "  " + " " * 7 + "^"


@pytest.mark.parametrize("char", ["\u0085", "\u2028", "\u2029"])
def test_unicode_line_separators_in_a_string_do_not_shift_line_numbers(tmp_path, char):
    text = SPEC.replace("{PARAMS}", "{d: 8}").replace("layers:\n", f'doc: "a{char}b{char}c"\nlayers:\n')
    text = text.replace("out_features: d}", "out_features: dd}")
    err = check_refused(write(tmp_path, text), "unknown name 'dd'", "8:54")
    assert err.splitlines()[1] == "    - {name: fc, kind: linear, input: x, out_features: dd}"


def test_carriage_returns_count_as_editors_count_them(tmp_path):
    text = SPEC.replace("{PARAMS}", "{d: 8}").replace("out_features: d}", "out_features: dd}").replace("\n", "\r\n")
    check_refused(write(tmp_path, text), "unknown name 'dd'", "7:54")


# ------------------------------------------------------------------ 6. a layer repeated through an alias

def test_a_layer_repeated_through_an_alias_is_reported_at_the_alias(tmp_path):
    text = """graphc: 1
dims: [batch]
inputs:
  x: {dtype: float32, shape: [batch, 8]}
layers:
  - {name: a, kind: relu, input: x}
  - &L {name: r, kind: relu, input: a}
  - *L
outputs: {y: r}
"""
    err = check_refused(write(tmp_path, text), "duplicate layer name 'r'", "8:5")
    assert "first defined at" in err and ":7:15" in err


# ------------------------------------------------------------------ 7. blocks nested too deeply

def test_deeply_nested_blocks_are_refused_at_the_use_that_crosses_the_limit(tmp_path):
    n = 300
    lines = ["graphc: 1", "dims: [batch]", "inputs:", "  x: {dtype: float32, shape: [batch, 8]}", "blocks:"]
    for i in range(n):
        inner = f"b{i + 1}" if i + 1 < n else "relu"
        lines.append(f"  b{i}: {{inputs: [x], layers: [{{name: l, kind: {inner}, input: x}}], outputs: {{y: l}}}}")
    lines += ["layers:", "  - {name: top, kind: b0, input: x}", "outputs: {y: top}"]
    p = write(tmp_path, "\n".join(lines) + "\n")
    # b63's layer uses b64: the 65th level (line 6 + 63)
    err = check_refused(p, "blocks are nested more than 64 deep", "69:47")
    assert "top" in err


def test_moderately_nested_blocks_are_fine(tmp_path):
    n = 20
    lines = ["graphc: 1", "dims: [batch]", "inputs:", "  x: {dtype: float32, shape: [batch, 8]}", "blocks:"]
    for i in range(n):
        inner = f"b{i + 1}" if i + 1 < n else "relu"
        lines.append(f"  b{i}: {{inputs: [x], layers: [{{name: l, kind: {inner}, input: x}}], outputs: {{y: l}}}}")
    lines += ["layers:", "  - {name: top, kind: b0, input: x}", "outputs: {y: top}"]
    rc, _, err = cli("check", write(tmp_path, "\n".join(lines) + "\n"))
    assert rc == 0, err


# ------------------------------------------------------------------ 8. unbounded inputs

def test_a_spec_from_an_endless_pipe_is_read_only_up_to_the_limit(tmp_path):
    fifo = tmp_path / "spec.fifo"
    os.mkfifo(fifo)
    written = [0]
    chunk = b"# " + b"a" * 65533 + b"\n"

    def writer():
        try:
            with open(fifo, "wb", buffering=0) as f:
                while written[0] < 16 * MAX_SPEC_BYTES:
                    written[0] += f.write(chunk)
        except (BrokenPipeError, OSError):
            pass

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    check_refused(fifo, f"spec file is larger than {MAX_SPEC_BYTES // 1024} KiB", "1:1")
    t.join(10)
    assert not t.is_alive()
    # graphc stopped reading just past the limit (plus what the pipe buffers)
    assert written[0] < 2 * MAX_SPEC_BYTES


# ------------------------------------------------------------------ 9. impossible paths

def test_a_spec_that_is_a_symlink_loop(tmp_path):
    (tmp_path / "l.yaml").symlink_to("l.yaml")
    err = user_error(cli("check", tmp_path / "l.yaml"), ("cannot read spec file", "symbolic links"))
    assert err.startswith("graphc: error: cannot read spec file"), err


def test_an_include_that_is_a_symlink_loop_is_located(tmp_path):
    (tmp_path / "l.yaml").symlink_to("l.yaml")
    p = write(tmp_path, SPEC.replace("{PARAMS}", "{d: 8}").replace("graphc: 1\n", "graphc: 1\ninclude: [l.yaml]\n"))
    err = check_refused(p, "cannot read included file l.yaml", "2:11")
    assert "symbolic links" in err


def test_an_include_whose_name_is_too_long_is_located(tmp_path):
    name = "a" * 300 + ".yaml"
    p = write(tmp_path, SPEC.replace("{PARAMS}", "{d: 8}").replace("graphc: 1\n", f"graphc: 1\ninclude: [{name}]\n"))
    err = check_refused(p, "cannot read included file", "2:11")
    assert "too long" in err


def test_a_spec_whose_name_is_too_long(tmp_path):
    user_error(cli("check", tmp_path / ("a" * 300 + ".yaml")), "too long")


# ------------------------------------------------------------------ 10. smaller ones

def test_a_quoted_version_must_be_the_integer():
    e = spec_error(SPEC.replace("{PARAMS}", "{d: 8}").replace("graphc: 1", 'graphc: "1"'))
    assert "must be the integer 1" in e.message and (e.span.line, e.span.col) == (1, 9)


def test_a_name_starting_with_a_digit_says_the_rule():
    e = spec_error(SPEC.replace("{PARAMS}", "{d: 8}").replace("graphc: 1\n", "graphc: 1\nname: 123abc\n"))
    assert "must start with a letter or '_'" in e.message and (e.span.line, e.span.col) == (2, 7)


def test_an_output_named_like_an_input_is_reported_at_its_name():
    e = spec_error(SPEC.replace("{PARAMS}", "{d: 8}").replace("outputs: {y: fc}", "outputs: {x: fc}"))
    assert "output 'x' has the name of an input" in e.message
    assert (e.span.line, e.span.col) == (8, 11)


def test_a_dim_example_above_its_maximum():
    e = spec_error(SPEC.replace("{PARAMS}", "{d: 8}").replace("{batch: 2, seq: 4}",
                                                             "{batch: 2, seq: {example: 2, max: 1}}"))
    assert "above its maximum" in e.message and (e.span.line, e.span.col) == (2, 33)


BLOCKS = """blocks:
  mlp:
    inputs: [x]
    layers:
      - {name: fc, kind: linear, input: x, out_features: 4}
    outputs: {y: fc}
"""


@pytest.mark.parametrize("head, message, where", [
    ("graphc: 2\n", "unsupported spec format version 2", "1:9"),
    ('graphc: "1"\n', "must be the integer 1", "1:9"),
    ("layers: []\n", "included file 'lib.yaml' has 'layers', but only its blocks are used", "1:1"),
    ("params: {d: 3}\n", "included file 'lib.yaml' has 'params', but only its blocks are used", "1:1"),
])
def test_included_files_may_only_define_blocks(tmp_path, head, message, where):
    lib = write(tmp_path, head + BLOCKS, "lib.yaml")
    p = write(tmp_path, SPEC.replace("{PARAMS}", "{d: 8}").replace("graphc: 1\n", "graphc: 1\ninclude: [lib.yaml]\n")
              .replace("kind: linear", "kind: mlp").replace(", out_features: d", ""))
    err = user_error(cli("check", p), message, located=lib, where=where)
    assert message in err.splitlines()[0], err
    # the same file without the offending line is fine
    lib.write_text(BLOCKS)
    rc, _, err = cli("check", p)
    assert rc == 0, err
