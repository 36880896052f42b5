"""graphc.ir.digraph against networkx (the oracle): the same nodes, attributes,
successors and predecessors, in the same order, after the same random sequence
of edits; the same topological orders and cycle verdicts; and a build that
never imports networkx."""
from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

from graphc.ir import digraph

ROOT = Path(__file__).resolve().parent.parent


def _same(ours: digraph.DiGraph, theirs: nx.DiGraph) -> None:
    assert list(ours) == list(theirs)
    assert list(ours.nodes(data=True)) == list(theirs.nodes(data=True))
    for n in theirs:
        assert list(ours.successors(n)) == list(theirs.successors(n))
        assert list(ours.predecessors(n)) == list(theirs.predecessors(n))
        assert ours.nodes[n] == theirs.nodes[n]
    assert len(ours) == len(theirs)


@pytest.mark.parametrize("seed", range(20))
def test_random_edits_match_networkx(seed):
    rng = random.Random(seed)
    ours, theirs = digraph.DiGraph(), nx.DiGraph()
    names = [f"n{i}" for i in range(12)]
    for _ in range(200):
        op = rng.random()
        a, b = rng.choice(names), rng.choice(names)
        if op < 0.25:
            attrs = {"value": rng.randint(0, 9)} if rng.random() < 0.5 else {}
            ours.add_node(a, **attrs)
            theirs.add_node(a, **attrs)
        elif op < 0.7:
            ours.add_edge(a, b)
            theirs.add_edge(a, b)
        elif op < 0.85:
            if a in theirs:
                ours.remove_node(a)
                theirs.remove_node(a)
            else:
                with pytest.raises(KeyError):
                    ours.remove_node(a)
        elif theirs.has_edge(a, b):
            ours.remove_edge(a, b)
            theirs.remove_edge(a, b)
        else:
            with pytest.raises(KeyError):
                ours.remove_edge(a, b)
        _same(ours, theirs)
    assert digraph.is_directed_acyclic_graph(ours) == nx.is_directed_acyclic_graph(theirs)


@pytest.mark.parametrize("seed", range(30))
def test_topological_order_and_cycles_match_networkx(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 15)
    order = list(range(n))
    rng.shuffle(order)
    ours, theirs = digraph.DiGraph(), nx.DiGraph()
    ours.add_nodes_from(order)
    theirs.add_nodes_from(order)
    cyclic = seed % 3 == 0
    for _ in range(rng.randint(0, 3 * n)):
        a, b = rng.randrange(n), rng.randrange(n)
        if a == b or (not cyclic and a > b):
            continue                         # acyclic unless asked: edges go up the numbering
        ours.add_edge(a, b)
        theirs.add_edge(a, b)
    key = {v: rng.random() for v in range(n)}.__getitem__
    assert digraph.is_directed_acyclic_graph(ours) == nx.is_directed_acyclic_graph(theirs)
    if nx.is_directed_acyclic_graph(theirs):
        assert digraph.lexicographical_topological_sort(ours, key) == \
            list(nx.lexicographical_topological_sort(theirs, key=key))
    else:
        with pytest.raises(digraph.Unfeasible):
            digraph.lexicographical_topological_sort(ours, key)


def test_build_never_imports_networkx(tmp_path):
    script = ("import sys\nfrom graphc.cli import main\n"
              f"assert main(['build', {str(ROOT / 'specs' / 'transformer_encoder.yaml')!r}, '-o', "
              f"{str(tmp_path / 'm.onnx')!r}, '-q']) == 0\n"
              "print('networkx' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == "False"
