"""The user-experience surface: the layer reference and JSON Schema generated
from the registry (and the committed copies kept current), pictures of the
graph, the info table, and build progress on a terminal.

Most CLI checks call graphc's entry point in-process (helpers.cli): a
subprocess per check would cost a second of imports each."""
from __future__ import annotations

import copy
import importlib.util
import io
import json
import shutil
from pathlib import Path

import pytest
import yaml

from graphc.compiler import check_spec, compile_spec
from graphc.layers import LAYERS
from graphc.progress import Progress
from graphc.layer_docs import layer_detail_text, layers_list_text, layers_markdown
from graphc.schema import schema_json, spec_schema
from graphc.specfile.parse import TOP_KEYS
from helpers import ROOT, SPECS, cli, graphc_cli, user_error

ALL_SPECS = sorted(SPECS.rglob("*.yaml"))


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "tools" / "gen_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _validator():
    try:
        import jsonschema
    except ImportError:
        pytest.skip("jsonschema is not installed (pip install -e '.[test]')")
    return jsonschema.Draft7Validator(spec_schema())


def _errors(validator, doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


# ------------------------------------------------------------------ generated files

@pytest.mark.parametrize("path", ["docs/layers.md", "docs/graphc.schema.json"])
def test_generated_docs_are_current(path):
    want = _gen_docs().generated()[path]
    have = (ROOT / path).read_text(encoding="utf-8") if (ROOT / path).is_file() else None
    if have != want:
        import difflib
        diff = list(difflib.unified_diff((have or "").splitlines(), want.splitlines(), "committed", "generated",
                                         lineterm="", n=1))
        pytest.fail(f"{path} is stale: run `python tools/gen_docs.py` and commit the result\n" +
                    "\n".join(diff[:30]) + ("\n..." if len(diff) > 30 else ""), pytrace=False)


def test_generation_is_deterministic():
    assert layers_markdown() == layers_markdown()
    assert schema_json() == schema_json()


def test_reference_covers_every_registered_kind():
    md = layers_markdown()
    text = layers_list_text()
    for name, kind in LAYERS.items():
        assert f"### `{name}`" in md
        assert name in text and kind.summary in text
        for p in kind.params:
            assert f"`{p.name}`" in md, f"{name}.{p.name} missing from docs/layers.md"


# ------------------------------------------------------------------ schema

def test_schema_is_valid_draft7_and_mirrors_the_parser():
    try:
        import jsonschema
    except ImportError:
        pytest.skip("jsonschema is not installed")
    s = spec_schema()
    jsonschema.Draft7Validator.check_schema(s)
    assert set(s["properties"]) == set(TOP_KEYS)
    for name, kind in LAYERS.items():
        d = s["definitions"][f"kind_{name}"]
        assert {p.name for p in kind.params} <= set(d["properties"])
        assert d["additionalProperties"] is False
        for p in kind.params:
            assert d["properties"][p.name]["description"], f"{name}.{p.name} has no hover text"


@pytest.mark.parametrize("path", ALL_SPECS, ids=[str(p.relative_to(SPECS)) for p in ALL_SPECS])
def test_every_example_spec_validates(path):
    v = _validator()
    assert _errors(v, yaml.safe_load(path.read_text(encoding="utf-8"))) == []


def test_every_kind_example_validates_as_a_layer():
    v = _validator()
    s = spec_schema()
    import jsonschema
    layer = jsonschema.Draft7Validator({"$ref": "#/definitions/layer", "definitions": s["definitions"]})
    for name, kind in LAYERS.items():
        if kind.example:
            doc = yaml.safe_load(kind.example)
            assert doc.get("kind") == name, f"the example of {name} uses kind {doc.get('kind')!r}"
            assert _errors(layer, doc) == [], f"the example of {name}"
    del v


MLP = yaml.safe_load((SPECS / "mlp.yaml").read_text(encoding="utf-8"))


def _mutated(fn):
    doc = copy.deepcopy(MLP)
    fn(doc)
    return doc


BAD = {
    "unknown top-level key": lambda d: d.update(layer=[]),
    "no version": lambda d: d.pop("graphc"),
    "wrong version": lambda d: d.update(graphc=2),
    "unknown param of a built-in kind": lambda d: d["layers"][0].update(out_feature=4),
    "int param given a list": lambda d: d["layers"][0].update(out_features=[4]),
    "bool param given a number": lambda d: d["layers"][0].update(bias=3),
    "float param given a list": lambda d: d["layers"][2].update(p=[0.1]),
    "str choice given a number": lambda d: d["layers"][1].update(approximate=1),
    "int below its minimum": lambda d: d["layers"][0].update(out_features=0),
    "required param missing": lambda d: d["layers"][0].pop("out_features"),
    "input and inputs both": lambda d: d["layers"][1].update(inputs=["fc1"]),
    "too many inputs": lambda d: d["layers"][1].update(inputs=["fc1", "fc1"]) or d["layers"][1].pop("input"),
    "unknown input port": lambda d: d["layers"][1].update(inputs={"q": "fc1"}) or d["layers"][1].pop("input"),
    "layer without a kind": lambda d: d["layers"][1].pop("kind"),
    "bad dtype": lambda d: d["inputs"]["x"].update(dtype="float64"),
    "bad layer name": lambda d: d["layers"][0].update(name="fc-1"),
    "unknown key in an input": lambda d: d["inputs"]["x"].update(dims=[1]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_known_bad_specs_fail_the_schema(case):
    v = _validator()
    assert _errors(v, _mutated(BAD[case])), f"the schema accepted: {case}"


@pytest.mark.parametrize("name", ["unknown_arg.yaml", "wrong_type.yaml", "no_version.yaml"])
def test_error_corpus_specs_fail_the_schema(name):
    v = _validator()
    assert _errors(v, yaml.safe_load((ROOT / "tests" / "errors" / name).read_text(encoding="utf-8")))


GOOD_VARIANTS = {
    "int as an expression": lambda d: d["layers"][0].update(out_features="hidden * 2"),
    "bool from a hyperparameter": lambda d: (d["params"].update(use_bias=False), d["layers"][0].update(bias="use_bias")),
    "optional param as null": lambda d: d["layers"][0].update(in_features=None),
    "inputs as a port map": lambda d: d["layers"][1].pop("input") and d["layers"][1].update(inputs={"x": "fc1"}),
    "outputs as a list": lambda d: d.update(outputs=["fc2", "log_probs"]),
    "dims with examples": lambda d: d.update(dims={"batch": {"example": 4, "max": 64}}),
}


@pytest.mark.parametrize("case", list(GOOD_VARIANTS))
def test_schema_is_never_stricter_than_graphc(case, tmp_path):
    """Each variant compiles, so the schema must accept it."""
    v = _validator()
    doc = _mutated(GOOD_VARIANTS[case])
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    check_spec(path)
    assert _errors(v, doc) == []


def test_block_kinds_take_their_own_arguments():
    v = _validator()
    doc = {
        "graphc": 1, "dims": ["batch"], "inputs": {"x": {"dtype": "float32", "shape": ["batch", 8]}},
        "blocks": {"mlp_block": {"params": {"width": 16}, "inputs": ["h"],
                                 "layers": [{"name": "fc", "kind": "linear", "input": "h", "out_features": "width"}],
                                 "outputs": {"y": "fc"}}},
        "layers": [{"name": "b", "kind": "mlp_block", "input": "x", "width": 32, "repeat": 2}],
        "outputs": {"y": "b"},
    }
    assert _errors(v, doc) == []
    doc["blocks"]["mlp_block"]["layers"][0]["out_feature"] = 3   # a built-in inside a block is still checked
    assert _errors(v, doc)


# ------------------------------------------------------------------ graphc layers / schema

def test_cli_layers_lists_every_kind():
    rc, out, _ = cli("layers")
    assert rc == 0
    for name in LAYERS:
        assert f"  {name} " in out


def test_cli_layers_detail():
    rc, out, _ = cli("layers", "linear")
    assert rc == 0
    assert out == layer_detail_text(LAYERS["linear"])
    for piece in ("out_features", "required", "in_features", "bias", "true", ">= 1",
                  "[*, in_features] -> [*, out_features]", "kind: linear", "torch.nn.Linear"):
        assert piece in out
    rc, out, _ = cli("layers", "gelu")
    assert "none | tanh" in out


def test_cli_layers_unknown_kind():
    result = cli("layers", "linaer")
    user_error(result, ("unknown layer kind 'linaer'", "did you mean 'linear'?"))
    assert result[1] == ""


def test_cli_schema_prints_stable_json():
    rc, out, _ = cli("schema")
    assert rc == 0 and out == schema_json()
    assert json.loads(out)["properties"]["graphc"]["const"] == 1


# ------------------------------------------------------------------ pictures

def test_graph_mermaid_has_layers_kinds_and_shapes():
    rc, out, _ = cli("graph", "specs/mlp.yaml", "--format", "mermaid")
    assert rc == 0 and out.startswith("flowchart TD")
    for piece in ("fc1: linear", "drop: dropout", "log_probs: log_softmax", "[batch, 784]", "[batch, 256]",
                  "[batch, 10]", "<br/>"):
        assert piece in out
    # the dropout layer is on the path, not skipped
    assert out.count("-->") == 7


def test_graph_dot_with_dims_and_ops():
    rc, out, _ = cli("graph", "specs/mlp.yaml", "--format", "dot", "--dim", "batch=3")
    assert rc == 0 and out.startswith('digraph "mlp"')
    assert "fc2: linear\\n[3, 10]" in out and "x\\n[3, 784]" in out
    rc, out, _ = cli("graph", "specs/mlp.yaml", "--ops")
    assert 'label="fc1"' in out and "MatMul\\n[batch, 256]" in out and "Derive" not in out


def test_graph_edge_labels_name_ports(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("graphc: 1\ndims: [batch]\ninputs: {x: {dtype: float32, shape: [batch, 8]}}\n"
                    "layers:\n  - {name: parts, kind: split, input: x, sizes: [3, 5]}\n"
                    "  - {name: act, kind: relu, input: parts.y1}\n"
                    "outputs: {y: act, first: parts}\n", encoding="utf-8")
    rc, out, _ = cli("graph", str(spec), "--format", "mermaid")
    assert rc == 0
    assert '-->|"y1"|' in out and "act: relu<br/>[batch, 5]" in out


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' is not installed (apt-get install graphviz)")
def test_graph_svg_and_png_through_graphviz(tmp_path):
    rc, out, _ = cli("graph", "specs/mlp.yaml", "--format", "svg")
    assert rc == 0 and "<svg" in out and "fc1: linear" in out
    png = tmp_path / "mlp.png"
    rc, _, _ = cli("graph", "specs/mlp.yaml", "--format", "png", "-o", str(png))
    assert rc == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_graph_png_needs_output():
    result = cli("graph", "specs/mlp.yaml", "--format", "png")
    user_error(result, "-o")
    assert result[1] == ""


def test_graph_svg_without_graphviz_names_the_package(monkeypatch):
    import graphc.render
    monkeypatch.setattr(graphc.render.shutil, "which", lambda name: None)
    result = cli("graph", "specs/mlp.yaml", "--format", "svg")
    user_error(result, ("Graphviz 'dot' not found", "apt-get install graphviz", "brew install graphviz"))
    assert result[1] == ""


# ------------------------------------------------------------------ info

def test_info_json_parses_and_adds_up():
    rc, out, _ = cli("info", "specs/mlp.yaml", "--dim", "batch=2", "--json")
    assert rc == 0
    data = json.loads(out)
    assert data["dims"]["batch"] == 2
    assert data["total_params"] == sum(r["params"] for r in data["layers"]) == 203_530
    assert {r["layer"] for r in data["layers"]} >= {"fc1", "fc2"}
    assert data["total_flops"] == sum(r["flops"] for r in data["layers"])
    assert {r["layer"]: r["kind"] for r in data["layers"]}["fc1"] == "linear"
    # compile-time work (the transposed weight folded into a constant) is not inference FLOPs
    assert {r["layer"]: r["flops"] for r in data["layers"]}["fc1"] == 2 * 2 * 784 * 256 + 2 * 256


def test_info_names_kinds_through_blocks_and_repeat():
    rc, out, _ = cli("info", "specs/tutorial/encoder_by_hand.yaml", "--json")
    kinds = {r["layer"]: r["kind"] for r in json.loads(out)["layers"]}
    assert kinds["encoder.layers.1.self_attn"] == "multihead_attention"
    assert kinds["encoder.layers.1.norm2"] == "layer_norm"
    assert kinds["encoder.layers.1.self_attn.out_proj"] == "linear"   # a built-in kind's member (analysis.BUILT_IN_MEMBERS)
    rc, out, _ = cli("info", "specs/tutorial/encoder_by_hand.yaml", "--depth", "2")
    assert rc == 0 and "encoder.layers.5  encoder_layer" in out


# ------------------------------------------------------------------ progress

class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_draws_stages_on_a_terminal():
    stream = FakeTTY()
    with Progress(stream) as progress:
        compile_spec(SPECS / "mlp.yaml", progress=progress)
        drawn = stream.getvalue()
    for piece in ("parsing and checking", "weights", "MB", "(100%)", "fc2.bias", "folding", "lowering"):
        assert piece in drawn
    assert stream.getvalue().endswith("\r")      # the line is erased at the end


def test_progress_throttles_within_a_stage():
    stream = FakeTTY()
    p = Progress(stream, clock=lambda: 0.0)
    for i in range(1, 1001):
        p("weights", i * 1000, 1_000_000, f"t{i}")
    assert stream.getvalue().count("\r") == 2    # the first and the final (100%) draw only


@pytest.mark.parametrize("stream,enabled", [(io.StringIO(), None), (FakeTTY(), False)],
                         ids=["not-a-tty", "quiet"])
def test_progress_silent_off_a_terminal_or_when_quiet(stream, enabled):
    with Progress(stream, enabled=enabled) as progress:
        compile_spec(SPECS / "mlp.yaml", progress=progress)
    assert stream.getvalue() == ""


def test_build_shows_progress_only_on_a_terminal_and_not_quiet(tmp_path, monkeypatch, capsys):
    """Calls graphc.cli.main itself: helpers.cli would put a StringIO (not a
    terminal) in place of the fake terminal this test needs on stderr."""
    from graphc.cli import main
    tty = FakeTTY()
    monkeypatch.setattr("sys.stderr", tty)
    assert main(["build", "specs/mlp.yaml", "-o", str(tmp_path / "a.onnx")]) == 0
    assert "weights" in tty.getvalue() and "writing" in tty.getvalue()
    tty2 = FakeTTY()
    monkeypatch.setattr("sys.stderr", tty2)
    assert main(["build", "specs/mlp.yaml", "-o", str(tmp_path / "b.onnx"), "--quiet"]) == 0
    assert tty2.getvalue() == ""
    capsys.readouterr()


def test_build_in_a_pipe_prints_no_progress(tmp_path):
    r = graphc_cli("build", "specs/mlp.yaml", "-o", str(tmp_path / "m.onnx"))
    assert r.returncode == 0 and r.stderr == ""


# ------------------------------------------------------------------ docs

def test_editor_doc_modeline_points_at_the_schema():
    text = (ROOT / "docs" / "editor.md").read_text(encoding="utf-8")
    assert "# yaml-language-server: $schema=../docs/graphc.schema.json" in text
    assert (ROOT / "specs" / "../docs/graphc.schema.json").resolve().is_file()


def test_closed_pipe_is_not_a_crash():
    """`graphc schema | head -1`: the reader leaving early is not a graphc bug.
    A subprocess of its own: its stdout must be a pipe whose reader has gone,
    which helpers.graphc_cli (captured output) cannot give."""
    import os
    import subprocess
    import sys
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", "graphc", "schema"], stdout=w, stderr=subprocess.PIPE,
                           cwd=ROOT, timeout=120)
    finally:
        os.close(w)
    assert p.returncode == 141 and b"internal error" not in p.stderr


def test_run_bench_reports_inputs_and_latency_quantiles():
    """`graphc run SPEC --bench N`: the inputs it timed (shapes at the given dims)
    and median/p10/p90/min, in that order; p10 <= median <= p90."""
    import re
    r = graphc_cli("run", "specs/mha.yaml", "--random", "--dim", "seq=9", "--dim", "batch=3",
                   "--bench", "7", "--warmup", "1", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "inputs: x float32[3, 9, 512], key_padding_mask bool[3, 9]" in r.stdout
    m = re.search(r"latency over 7 runs after 1 warm-up: median ([\d.]+) ms, p10 ([\d.]+) ms, "
                  r"p90 ([\d.]+) ms, min ([\d.]+) ms \(cpu, 1 threads\)", r.stdout)
    assert m, r.stdout
    median, p10, p90, low = map(float, m.groups())
    assert low <= p10 <= median <= p90
