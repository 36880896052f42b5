"""Text golden dumps (IR and ONNX) of a few example specs: a refactor that
changes the emitted graph fails here and shows the diff; an intended change is
recorded with `python tools/update_goldens.py` and reviewed in `git diff`."""
import difflib
import sys

import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "tools"))
from update_goldens import GOLDEN, SPECS, golden_text  # noqa: E402


@pytest.mark.parametrize("spec", SPECS)
def test_emitted_graph_matches_golden(spec):
    want = (GOLDEN / f"{spec}.txt").read_text(encoding="utf-8")
    got = golden_text(spec)
    if got != want:
        diff = "".join(list(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                                 f"golden/{spec}.txt", "this build"))[:80])
        pytest.fail(f"the emitted graph of specs/{spec}.yaml changed (run tools/update_goldens.py "
                    f"if intended, and review the diff):\n{diff}")
