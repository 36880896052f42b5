"""Write the text golden dumps of tests/golden/: for a few example specs, the
IR after the pass pipeline (``Graph.dump``) and the lowered ONNX graph
(``onnx.printer``, weights left out). tests/test_golden.py compares a fresh
build with them, so a change that alters the emitted graph shows up as a diff
in review ("process replay"). After an intended change:

    python tools/update_goldens.py      # then read `git diff tests/golden`
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"

# small specs that between them reach every family of lowering: linear/MLP,
# concatenated heads, causal MHA, GQA, cross-attention, positions, LSTM, GRU
SPECS = ("mlp", "seed_mha_concat", "mha_causal", "gqa", "cross_attention", "positional_demo",
         "lstm_uni", "gru_classifier")


def golden_text(spec: str) -> str:
    import onnx.printer
    from graphc.compiler import compile_spec
    compiled = compile_spec(ROOT / "specs" / f"{spec}.yaml", keep_weights=False)
    return ("# IR after the pass pipeline (graphc.ir.Graph.dump)\n" + compiled.graph.dump() +
            "\n\n# ONNX (onnx.printer; weights left out)\n" + onnx.printer.to_text(compiled.model.graph) + "\n")


def main() -> int:
    sys.path.insert(0, str(ROOT))
    GOLDEN.mkdir(exist_ok=True)
    for spec in SPECS:
        (GOLDEN / f"{spec}.txt").write_text(golden_text(spec), encoding="utf-8")
        print(f"wrote tests/golden/{spec}.txt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
