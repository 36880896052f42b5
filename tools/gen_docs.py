#!/usr/bin/env python
"""Regenerate the files generated from the layer registry:

    docs/layers.md           the layer reference (the text of `graphc layers KIND`)
    docs/graphc.schema.json  the JSON Schema of specs (the output of `graphc schema`)

Why a tool and a test: layer kinds are added often, and these files are read
on GitHub and by editors without running graphc; tests/test_ux.py fails when
a committed file differs from what this would write.

    python tools/gen_docs.py            write what changed (idempotent; fast)
    python tools/gen_docs.py --check    exit 1 and list the stale files, write nothing
    python tools/gen_docs.py --pictures also redraw docs/mlp.svg (needs Graphviz 'dot')
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def generators() -> dict[str, Callable[[], str]]:
    """Repository-relative path -> function returning that file's text."""
    from graphc.layer_docs import layers_markdown
    from graphc.schema import schema_json
    return {"docs/layers.md": layers_markdown, "docs/graphc.schema.json": schema_json}


def generated() -> dict[str, str]:
    return {path: fn() for path, fn in generators().items()}


def stale() -> list[str]:
    out = []
    for path, text in generated().items():
        p = ROOT / path
        if not p.is_file() or p.read_text(encoding="utf-8") != text:
            out.append(path)
    return out


def draw_pictures() -> list[str]:
    """docs/mlp.svg: the README's picture. Not checked for staleness: its bytes
    depend on the installed Graphviz version."""
    from graphc.compiler import check_spec
    from graphc.render import render_graph
    spec, g = check_spec(ROOT / "specs" / "mlp.yaml")
    svg = render_graph(g, "svg", spec=spec)
    target = ROOT / "docs" / "mlp.svg"
    if target.is_file() and target.read_text(encoding="utf-8") == svg:
        return []
    target.write_text(svg, encoding="utf-8")
    return ["docs/mlp.svg"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report stale files (exit 1 if any)")
    ap.add_argument("--pictures", action="store_true", help="also redraw docs/mlp.svg with Graphviz")
    args = ap.parse_args(argv)
    if args.check:
        bad = stale()
        for path in bad:
            print(f"stale: {path}")
        if bad:
            print("run: python tools/gen_docs.py")
        return 1 if bad else 0
    written = []
    for path, text in generated().items():
        p = ROOT / path
        if p.is_file() and p.read_text(encoding="utf-8") == text:
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
        written.append(path)
    if args.pictures:
        written += draw_pictures()
    print("wrote " + ", ".join(written) if written else "up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
