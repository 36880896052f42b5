"""tools/bench_compile.py runs end to end (graphc side only: the dynamo export
needs onnxscript and takes ~20 s a run) and reports what it says it reports.
Nothing about time is asserted: the targets are judged by the tool, in one run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_compile_smoke(tmp_path):
    out = tmp_path / "c.json"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_compile.py"), "--only", "encoder", "--reps", "1",
                        "--dynamo-reps", "0", "--json-out", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(out.read_text())
    keys = set(report["candidates"])
    assert keys == {"graphc encoder seeded", "graphc encoder safetensors"}, keys
    for c in report["candidates"].values():
        assert len(c["runs_s"]) == 1 and c["min_s"] > 0
    assert [(row["workload"], row["weights"]) for row in report["rows"]] == [("encoder", "seeded"),
                                                                            ("encoder", "safetensors")]
    assert "| encoder | safetensors |" in r.stdout
