"""The third CLI and spec sweep (a newcomer's walk through the commands): each
test here failed before its fix. Small specs only; in-process CLI (helpers.cli)."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import TINY, cli, user_error

HEAD = """graphc: 1
dims: {batch: 2}
inputs:
  x: {dtype: float32, shape: [batch, 4]}
"""

BLOCKS = """graphc: 1
blocks:
  ff:
    params: {d: 8}
    inputs: [x]
    layers:
      - {name: l1, kind: linear, input: x, out_features: d}
    outputs: {y: l1}
"""


def write(tmp_path, name: str, text: str):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8", newline="")
    return p


@pytest.fixture
def tiny(tmp_path):
    return write(tmp_path, "tiny.yaml", TINY)


@pytest.fixture
def tiny_model(tiny, tmp_path):
    out = tmp_path / "tiny.onnx"
    assert cli("build", tiny, "-q", "-o", out)[0] == 0
    return out


# ------------------------------------------------------------------ blocks

def test_a_block_named_like_a_built_in_kind_is_refused_at_its_name(tmp_path):
    """The block was silently shadowed by the built-in kind: its own layers never
    ran, and the error said "layer 'f' needs 'out_features'"."""
    spec = write(tmp_path, "m.yaml", HEAD + """blocks:
  linear:
    inputs: [x]
    layers:
      - {name: r, kind: relu, input: x}
    outputs: {y: r}
layers:
  - {name: f, kind: linear, input: x}
outputs: {y: f}
""")
    user_error(cli("check", spec), "block 'linear' has the name of a built-in layer kind",
               located=spec, where="6:3", hint="rename the block")


def test_a_block_defined_twice_is_reported_at_the_names(tmp_path):
    """It pointed at the block's first key (its body), in both files."""
    write(tmp_path, "blocks.yaml", BLOCKS)
    spec = write(tmp_path, "m.yaml", HEAD.replace("dims:", "include: [blocks.yaml]\ndims:") + """blocks:
  ff:
    inputs: [x]
    layers:
      - {name: r, kind: relu, input: x}
    outputs: {y: r}
layers:
  - {name: f, kind: ff, input: x}
outputs: {y: f}
""")
    err = user_error(cli("check", spec), "block 'ff' is defined twice", located=spec, where="7:3")
    assert f"first defined at {tmp_path / 'blocks.yaml'}:3:3" in err, err


# ------------------------------------------------------------------ check and info

def test_check_counts_layers_not_the_copied_outputs_row(tmp_path):
    """One layer given as two outputs read "2 layers" (the '(outputs)' row of the
    copy was counted); one layer read "1 layers"."""
    spec = write(tmp_path, "m.yaml", HEAD + """layers:
  - {name: fc, kind: linear, input: x, out_features: 4}
outputs: {y: fc, z: fc}
""")
    rc, out, err = cli("check", spec)
    assert rc == 0, err
    assert out.splitlines()[-1].startswith(f"ok: {spec}: 1 layer, 20 parameters"), out
    rc, out, _ = cli("check", write(tmp_path, "t.yaml", TINY))
    assert rc == 0 and ": 2 layers, 15 parameters" in out, out


@pytest.mark.parametrize("command", ["check", "info"])
@pytest.mark.parametrize("depth", ["0", "-1"])
def test_a_depth_below_one_is_refused(tiny, command, depth):
    """check ran as --depth 1; info printed a row with an empty layer name."""
    user_error(cli(command, tiny, "--depth", depth), "--depth: must be at least 1", usage=True)


# ------------------------------------------------------------------ YAML in users' words

@pytest.mark.parametrize("text, message, where, hint", [
    (HEAD.replace("  x:", "\tx:"), "a tab character; YAML indents and separates with spaces only", "4:1",
     "replace the tab with spaces"),
    (HEAD + "---\ngraphc: 1\n", "a second YAML document starts here", "5:1", "remove this '---' line"),
    (HEAD + "a: &w 1\nb: &w 2\n", "the anchor '&w' is defined twice", "6:4", "give each anchor its own name"),
])
def test_yaml_mistakes_are_said_in_full(tmp_path, text, message, where, hint):
    """PyYAML's half-sentences were shown alone: "malformed YAML: but found
    another document", "... second occurrence"."""
    spec = write(tmp_path, "m.yaml", text)
    user_error(cli("check", spec), message, located=spec, where=where, hint=hint)


def test_a_directory_given_as_the_spec_says_so(tmp_path):
    """It read "cannot read spec file DIR: Is a directory" (os.fdopen's refusal)."""
    user_error(cli("check", tmp_path), f"{tmp_path} is a directory, not a spec file")
    user_error(cli("build", tmp_path, "-o", tmp_path / "m.onnx"), "is a directory, not a spec file")


# ------------------------------------------------------------------ files other tools wrote

def test_a_broken_config_json_is_located(tmp_path):
    """It read "not a valid JSON model config (Expecting ',' delimiter: line 3 column 3 (char 25))"."""
    (tmp_path / "ckpt").mkdir()
    cfg = write(tmp_path / "ckpt", "config.json", '{\n  "model_type": "gpt2"\n  "n_embd": 4\n}\n')
    err = user_error(cli("import", tmp_path / "ckpt"), "not a valid JSON model config: Expecting ',' delimiter",
                     located=cfg, where="3:3")
    assert '"n_embd": 4' in err and "char" not in err
    write(tmp_path / "ckpt", "config.json", "\n")
    user_error(cli("import", tmp_path / "ckpt"), "the file is empty; not a model config")


def test_a_misspelt_weight_name_is_paired_with_the_parameter_it_misses(tiny, tmp_path):
    """The missing and unexpected names were listed apart, with no pairing."""
    w = tmp_path / "w.npz"
    np.savez(w, **{"fc.weigth": np.zeros((3, 4), np.float32), "fc.bias": np.zeros(3, np.float32),
                   "fc.weight_scale": np.zeros((3, 4), np.float32)})
    err = user_error(cli("build", tiny, "-o", tmp_path / "m.onnx", "--weights", w), "do not match")
    assert "unexpected: fc.weigth [3, 4] (the spec's fc.weight?)" in err, err
    assert "unexpected: fc.weight_scale [3, 4]\n" in err, err    # not close enough: no guess
    assert not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------ options that changed nothing

def test_run_output_named_npy_is_refused(tiny_model, tmp_path):
    """It wrote an .npz archive under the .npy name (numpy.load then gives an NpzFile)."""
    user_error(cli("run", tiny_model, "--random", "--output", tmp_path / "o.npy"),
               "writes an .npz archive", hint=f"name it {tmp_path / 'o.npz'}")
    assert not (tmp_path / "o.npy").exists()


def test_bench_zero_and_warmup_alone_are_refused(tiny_model):
    """--bench 0 ran once and printed no timing; --warmup without --bench did nothing."""
    user_error(cli("run", tiny_model, "--random", "--bench", "0"), "--bench 0 times no runs")
    user_error(cli("run", tiny_model, "--random", "--warmup", "2"), "--warmup applies to --bench")
    rc, out, err = cli("run", tiny_model, "--bench", "2", "--warmup", "0")
    assert rc == 0 and "latency over 2 runs after 0 warm-up" in out, err


@pytest.mark.parametrize("command", [["build", "{tiny}", "-o", ""], ["run", "{model}", "--random", "--output", ""],
                                     ["graph", "{tiny}", "-o", ""], ["schema", "-o", ""]])
def test_an_empty_output_path_is_refused(tiny, tiny_model, command):
    """build said "cannot write .: it is a directory"; run, graph and schema
    treated it as no output at all (graph and schema printed to stdout)."""
    args = [a.format(tiny=tiny, model=tiny_model) for a in command]
    rc, out, err = cli(*args)
    user_error((rc, out, err), "the output path is empty")
    assert out == ""


@pytest.mark.parametrize("command", ["build", "run"])
def test_ignore_weights_without_weights_is_refused(tiny, tmp_path, command):
    """The pattern was silently unused: the model had seeded weights."""
    args = ["build", tiny, "-o", tmp_path / "m.onnx"] if command == "build" else ["run", tiny, "--random"]
    user_error(cli(*args, "--ignore-weights", "fc.*"), "--ignore-weights applies to the tensors of a --weights file")
    assert not (tmp_path / "m.onnx").exists()


def test_an_input_given_twice_is_refused(tiny_model, tmp_path):
    """The later file silently won: which values ran depended on the flags' order."""
    a, b, both = tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "both.npz"
    np.save(a, np.zeros((2, 4), np.float32))
    np.save(b, np.ones((2, 4), np.float32))
    np.savez(both, x=np.ones((2, 4), np.float32))
    user_error(cli("run", tiny_model, "--input", f"x={a}", "--input", f"x={b}"),
               f"input 'x' is given twice: from {a} and from {b}")
    user_error(cli("run", tiny_model, "--input", both, "--input", f"x={a}"), "input 'x' is given twice")


def test_a_dim_given_twice_with_two_sizes_is_refused(tiny_model, tiny):
    user_error(cli("run", tiny_model, "--random", "--dim", "batch=3", "--dim", "batch=5"),
               "--dim batch is given twice, as 3 and as 5")
    assert cli("check", tiny, "--dim", "batch=3", "--dim", "batch=3")[0] == 0


def test_an_ignore_pattern_that_drops_a_parameter_says_so(tiny, tmp_path):
    """`--ignore-weights 'fc.*'` dropped the spec's own fc.weight and fc.bias, and
    the error listed them as "missing" although the file holds them."""
    w = tmp_path / "w.npz"
    np.savez(w, **{"fc.weight": np.zeros((3, 4), np.float32), "fc.bias": np.zeros(3, np.float32),
                   "fc.extra": np.zeros(3, np.float32)})
    user_error(cli("build", tiny, "-o", tmp_path / "m.onnx", "--weights", w, "--ignore-weights", "fc.*"),
               "--ignore-weights 'fc.*' drops 'fc.bias' (and 1 more) of", hint="make the pattern match only")
    spec = write(tmp_path, "ig.yaml", TINY + "weights:\n  ignore: ['fc.*']\n")
    user_error(cli("build", spec, "-o", tmp_path / "m.onnx", "--weights", w), "a parameter of the spec",
               located=spec, where="10:12")
    assert not (tmp_path / "m.onnx").exists()
    assert cli("build", tiny, "-q", "-o", tmp_path / "m.onnx", "--weights", w, "--ignore-weights", "fc.extra")[0] == 0


def test_a_spec_without_its_yaml_suffix_given_to_run_is_recognised(tiny, tiny_model, tmp_path):
    """ORT's "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from X
    failed:Protobuf parsing failed." was shown as it is."""
    bare = tmp_path / "tinyspec"
    bare.write_text("# a spec\n" + TINY)
    err = user_error(cli("run", bare, "--random"), "it is a graphc spec (YAML text), not a compiled model",
                     hint="ends in .yaml or .yml")
    assert "ONNXRuntimeError" not in err and "Protobuf" not in err
    (cut := tmp_path / "cut.onnx").write_bytes(tiny_model.read_bytes()[:100])
    err = user_error(cli("run", cut, "--random"), "it is not an ONNX model (a truncated file")
    assert "ONNXRuntimeError" not in err
