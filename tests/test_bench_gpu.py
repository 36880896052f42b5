"""tools/bench_gpu.py, the script prepared for a lent GPU machine (issue 19, item 6), runs end to
end here on the CPU provider, so its first run on a GPU is not its first run at all. Its float16
numbers are checked against independent references: the float32 build on ONNX Runtime's CPU
provider (parity part) and torch float32 eager with the same weights (timing part). Nothing about
time is asserted."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_gpu_smoke_on_cpu(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_gpu.py"), "--provider", "cpu", "--quick",
                        "--only", "mha", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["provider"] == "cpu"
    rows = {(row["spec"], row["dtype"]): row for row in report["parity"]}
    assert set(rows) == {("specs/mha.yaml", "float32"), ("specs/mha.yaml", "float16")}
    # the float32 build on the same provider as its reference: the very same numbers
    assert rows["specs/mha.yaml", "float32"]["outputs"]["y"]["max_abs"] == 0.0
    # float16 (softmax and norms in float32): within half precision's rounding of the float32 model
    assert 0 < rows["specs/mha.yaml", "float16"]["outputs"]["y"]["rel_rms"] < 5e-3
    timed = {(row["workload"], row["case"]) for row in report["timings"]}
    assert timed == {("encoder", "b2 s8"), ("encoder", "b2 s8 padded"), ("transformer", "b2 s8/6")}, timed
    for row in report["timings"]:
        assert row["graphc_ms"] > 0 and row["eager_ms"] > 0
        assert row["graphc_err"]["rel_rms"] < 5e-3, row        # graphc float16 against torch float32
    md = (tmp_path / "gpu.md").read_text()
    assert "| specs/mha.yaml | float16 |" in md and "| encoder | b2 s8 padded |" in md
