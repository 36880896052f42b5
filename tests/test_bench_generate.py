"""tools/bench_generate.py --quick runs end to end: every workload and batch measured for both
tools, every number positive, and graphc's greedy ids equal transformers' (no timed assertions:
speed is reported as same-run ratios by the tool, not asserted)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from helpers import ROOT

pytest.importorskip("torch")
pytest.importorskip("transformers")


def test_quick_run_measures_everything(tmp_path):
    out = tmp_path / "gen.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_generate.py"), "--quick", "--json-out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["workloads"]) == {"llama", "base"}
    for name, w in report["workloads"].items():
        assert set(w["batches"]) == {"1", "4"}
        for batch, m in w["batches"].items():
            assert m["ids_equal"] is True, (name, batch)
            for tool in ("graphc", "transformers"):
                for key in ("ttft_ms", "step8_ms", "step120_ms", "step_median_ms", "decode_tok_s"):
                    v = m[tool][key]
                    assert isinstance(v, float) and math.isfinite(v) and v > 0, (name, batch, tool, key, v)
            assert m["ratios"]["decode_tok_s_vs_transformers"] > 0
    assert "| llama | 4 | graphc |" in proc.stdout
