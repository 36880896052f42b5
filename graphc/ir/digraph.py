"""The directed graph under the IR: the part of ``networkx.DiGraph`` that
graphc.ir.Graph uses, with networkx's semantics (insertion-ordered nodes and
successors, an edge creates missing endpoints, removing a node removes its
edges), and the two algorithms graphc needs (a cycle test, a topological
order that breaks ties by a key).

Why not networkx itself: importing it costs every graphc process 70-90 ms on
an idle machine and 200-300 ms on a busy one (it imports all of its
algorithms and scans every installed package's entry points for backends),
a fifth of a whole ``graphc build`` of the 6-layer encoder, for a dict of
dicts (docs/benchmarks.md, "Compile as the user sees it"). tests/test_digraph.py
checks every function against networkx on random graphs.
"""
from __future__ import annotations

import heapq
from typing import Any, Callable, Hashable, Iterable, Iterator


class Unfeasible(ValueError):
    """The graph has a cycle, so it has no topological order."""


class _NodeView:
    def __init__(self, nodes: dict):
        self._nodes = nodes

    def __getitem__(self, key: Hashable) -> dict:
        return self._nodes[key]

    def __call__(self, data: bool = False) -> Iterator:
        return iter(self._nodes.items()) if data else iter(self._nodes)

    def __iter__(self) -> Iterator:
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)


class DiGraph:
    def __init__(self):
        self._nodes: dict[Hashable, dict[str, Any]] = {}
        self._succ: dict[Hashable, dict[Hashable, None]] = {}
        self._pred: dict[Hashable, dict[Hashable, None]] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._nodes

    def __iter__(self) -> Iterator:
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def nodes(self) -> _NodeView:
        return _NodeView(self._nodes)

    def add_node(self, key: Hashable, **attrs: Any) -> None:
        if key not in self._nodes:
            self._nodes[key] = {}
            self._succ[key] = {}
            self._pred[key] = {}
        self._nodes[key].update(attrs)

    def add_nodes_from(self, keys: Iterable[Hashable]) -> None:
        for k in keys:
            self.add_node(k)

    def add_edge(self, u: Hashable, v: Hashable) -> None:
        self.add_node(u)
        self.add_node(v)
        self._succ[u][v] = None
        self._pred[v][u] = None

    def remove_edge(self, u: Hashable, v: Hashable) -> None:
        try:
            del self._succ[u][v]
            del self._pred[v][u]
        except KeyError:
            raise KeyError(f"the edge {u}-{v} is not in the graph") from None

    def remove_node(self, key: Hashable) -> None:
        if key not in self._nodes:
            raise KeyError(f"the node {key} is not in the graph")
        for v in self._succ.pop(key):
            del self._pred[v][key]
        for u in self._pred.pop(key):
            del self._succ[u][key]
        del self._nodes[key]

    def successors(self, key: Hashable) -> Iterator:
        return iter(self._succ[key])

    def predecessors(self, key: Hashable) -> Iterator:
        return iter(self._pred[key])


def lexicographical_topological_sort(g: DiGraph, key: Callable[[Hashable], Any]) -> list:
    """Kahn's algorithm, always taking the ready node with the smallest key
    (networkx.lexicographical_topological_sort's order); Unfeasible on a cycle."""
    indegree = {n: len(g._pred[n]) for n in g._nodes}
    ready = [(key(n), i, n) for i, n in enumerate(g._nodes) if indegree[n] == 0]
    heapq.heapify(ready)
    order = list(g._nodes)
    position = {n: i for i, n in enumerate(order)}
    out = []
    while ready:
        _, _, n = heapq.heappop(ready)
        out.append(n)
        for v in g._succ[n]:
            indegree[v] -= 1
            if indegree[v] == 0:
                heapq.heappush(ready, (key(v), position[v], v))
    if len(out) != len(g._nodes):
        raise Unfeasible("the graph contains a cycle")
    return out


def is_directed_acyclic_graph(g: DiGraph) -> bool:
    try:
        lexicographical_topological_sort(g, key=lambda n: 0)
    except Unfeasible:
        return False
    return True
