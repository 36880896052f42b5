"""tools/bench.py --quick runs end to end and writes a complete report.

No timed assertions: the numbers depend on the machine and its load. What is
checked is that every workload, exporter and shape was measured, that graphc's
outputs agree with PyTorch eager, and that every ratio is a positive number.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from helpers import ROOT

pytest.importorskip("torch", reason="the benchmark compares against PyTorch (pip install -e '.[torch]')")

WORKLOADS = {"mha", "mha_causal", "encoder", "transformer", "lstm", "lstm_uni", "gru"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench.py"), "--quick", "--json-out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "### Targets" in proc.stdout and "graphc / best export" in proc.stdout
    return json.loads(out.read_text())


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_every_workload_and_exporter_measured(report):
    assert set(report["workloads"]) == WORKLOADS
    assert report["config"]["quick"] is True
    assert report["config"]["exporters"] == ["legacy"]
    assert all(_positive(v) for v in report["matmul_gflops"].values())
    for name, r in report["workloads"].items():
        assert r["weight_bytes"] > 1_000_000, name
        g = r["compile"]["graphc"]
        for key in ("inproc_s", "wall_s", "cli_maxrss_mb", "size_mb"):
            assert _positive(g[key]), (name, key, g[key])
        assert g["nodes"] > 0
        legacy = r["compile"]["legacy"]
        assert legacy["error"] is None, (name, legacy["error"])
        assert _positive(legacy["inproc_s"]) and _positive(legacy["ratio_inproc"]), name
        assert r["cases"], name
        for label, c in r["cases"].items():
            assert not c["errors"], (name, label, c["errors"])
            assert set(c["ms"]) == {"graphc", "legacy", "eager"}, (name, label)
            assert all(_positive(v) for v in c["ms"].values()), (name, label, c["ms"])
            assert _positive(c["gflop"]) and _positive(c["matmul_gflops_interleaved"])
            assert set(c["ratio"]) == {"legacy", "eager"} and all(_positive(v) for v in c["ratio"].values())


def test_parity_with_pytorch_eager(report):
    for name, r in report["workloads"].items():
        for label, c in r["cases"].items():
            for cand in ("graphc", "legacy"):
                diffs = c["max_abs_diff"][cand]
                assert set(diffs) == set(r["cases"][label]["max_abs_diff"]["graphc"])
                for out, d in diffs.items():
                    assert math.isfinite(d) and d <= 1e-3, (name, label, cand, out, d)
    for name in ("lstm", "lstm_uni"):      # graphc's sequence_lens against torch's packed sequences
        for out, d in report["workloads"][name]["varlen_max_abs_diff"].items():
            assert math.isfinite(d) and d <= 1e-3, (name, out, d)


def test_ratios_and_targets_reported(report):
    assert report["targets"]
    for t in report["targets"]:
        assert t["status"] in ("PASS", "MISS", "N/A")
        assert t["value"] is None or _positive(t["value"]), t
    kinds = {t["target"].split(" (")[0] for t in report["targets"]}
    assert {"compile not slower than legacy", "latency below PyTorch eager",
            "transformer compiled in < 1 s"} <= kinds
    assert any(t["target"].startswith("latency <= ") for t in report["targets"])
