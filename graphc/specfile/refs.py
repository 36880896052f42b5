"""Dotted layer names and the references that read them.

A layer name may be a dotted path whose later segments are names or numbers
(``layer.0``, ``block.1.ff``), so a spec can spell a checkpoint's module paths
(T5's ``block.0.layer.1``) directly and its tensors load without a map. A
reference ``a.b.c`` then reads the layer with the longest name that is a
prefix of it, and the one segment left over (if any) names that layer's
output. That is unambiguous because a layer's name may not extend another
layer's name in the same list (``enc`` and ``enc.h_n`` could each be meant
by ``enc.h_n``), which graphc.specfile.parse refuses.
"""
from __future__ import annotations

import re
from typing import Container

_SEG = r"(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+)"
LAYER_NAME_RE = re.compile(rf"^[A-Za-z_][A-Za-z0-9_]*(?:\.{_SEG})*$")
REF_RE = re.compile(rf"^[A-Za-z_][A-Za-z0-9_]*(?:\.{_SEG})*$")
LAYER_NAME_RULE = ("a layer name is a name (a letter or '_', then letters, digits or '_'), optionally followed by "
                   "'.'-separated names or numbers, e.g. block.0.layer.1")


def split_ref(ref: str, names: Container[str]) -> tuple[str, str]:
    """(layer or input, output) for ``ref``: the longest dotted prefix in ``names``
    and the rest; for an unknown ref, its first segment and the rest."""
    parts = ref.split(".")
    for n in range(len(parts), 0, -1):
        head = ".".join(parts[:n])
        if head in names:
            return head, ".".join(parts[n:])
    return parts[0], ".".join(parts[1:])


def extends(name: str, other: str) -> bool:
    """``name`` is ``other`` followed by more segments (``enc.0`` extends ``enc``)."""
    return name.startswith(other + ".")
