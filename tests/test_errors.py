"""Error goldens: each file in tests/errors/ starts with the exact diagnostic it
must produce ('# expect: LINE:COL: error: MESSAGE', optionally '# hint: ...').
Run through the CLI: exit code 2, the located message, no traceback."""
from pathlib import Path

import pytest

from helpers import ROOT, graphc_cli

CASES = sorted((ROOT / "tests" / "errors").glob("*.yaml"))


def _expectations(path: Path):
    expect = hint = None
    for line in path.read_text().splitlines():
        if line.startswith("# expect: "):
            expect = line[len("# expect: "):]
        elif line.startswith("# hint: "):
            hint = line[len("# hint: "):]
    return expect, hint


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
@pytest.mark.parametrize("command", ["check", "build"])
def test_error_golden(path, command, tmp_path):
    expect, hint = _expectations(path)
    rel = path.relative_to(ROOT)
    out = tmp_path / "out.onnx"
    args = [command, str(rel)] + (["-o", str(out)] if command == "build" else [])
    r = graphc_cli(*args)
    assert r.returncode == 2, r.stderr
    first = r.stderr.splitlines()[0]
    assert first == f"{rel}:{expect}"
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    # the offending line is quoted with a caret under the reported column
    col = int(expect.split(":")[1])
    assert lines[2].startswith("  " + " " * (col - 1) + "^")
    if hint:
        assert f"hint: {hint}" in r.stderr
    assert not out.exists()
