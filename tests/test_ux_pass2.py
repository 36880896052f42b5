"""Issue 20, the second user-experience pass: each test here failed before its fix."""
from __future__ import annotations

import json
import re

import pytest

from helpers import ROOT, SPECS, cli

MLP = str(SPECS / "mlp.yaml")


# ------------------------------------------------------------------ 2: graph format from the extension

def test_graph_format_follows_the_output_extension(tmp_path, monkeypatch):
    rc, _, _ = cli("graph", MLP, "-o", tmp_path / "g.mmd")
    assert rc == 0 and (tmp_path / "g.mmd").read_text().startswith("flowchart TD")
    rc, _, _ = cli("graph", MLP, "-o", tmp_path / "g.dot")
    assert rc == 0 and (tmp_path / "g.dot").read_text().startswith("digraph")
    import graphc.render
    asked = []
    monkeypatch.setattr(graphc.render, "dot_to_image", lambda dot, fmt: asked.append(fmt) or b"<svg/>")
    rc, _, err = cli("graph", MLP, "-o", tmp_path / "g.svg")
    assert rc == 0, err
    assert asked == ["svg"] and (tmp_path / "g.svg").read_text() == "<svg/>"


def test_graph_format_contradicting_the_extension_is_an_error(tmp_path):
    rc, out, err = cli("graph", MLP, "--format", "svg", "-o", tmp_path / "g.png")
    assert rc == 2 and "contradicts" in err and ".png" in err
    assert not (tmp_path / "g.png").exists()


# ------------------------------------------------------------------ 11: --ops grouped by layer

def test_graph_ops_clusters_primitives_by_layer():
    rc, out, _ = cli("graph", SPECS / "transformer_encoder.yaml", "--ops")
    assert rc == 0
    assert "subgraph cluster_" in out
    # the ops of one attention layer sit inside its cluster, nested in its stack member
    m = re.search(r'subgraph cluster_\d+ \{\n\s+label="encoder\.layers\.0\.self_attn";(.*?)\n\s+\}', out, re.S)
    assert m and "MatMul" in m.group(1)
    assert out.count("{") == out.count("}")
    rc, out, _ = cli("graph", SPECS / "transformer_encoder.yaml", "--ops", "--format", "mermaid")
    assert rc == 0 and 'subgraph g0["encoder"]' in out
    assert out.count("subgraph ") == sum(ln.strip() == "end" for ln in out.splitlines()) > 6
