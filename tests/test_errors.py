"""Error goldens: each file in tests/errors/ starts with the exact diagnostic it
must produce ('# expect: LINE:COL: error: MESSAGE', optionally '# hint: ...').
Each runs through the CLI's entry point (``helpers.cli``, in-process: the
goldens are many and a subprocess costs a second of imports each) for both
check and build: ``helpers.user_error`` (exit code 2, no traceback or internal
error, the located first line), that line exactly, the offending line quoted
with a caret under the column, no output file. A few also run as real
subprocesses (``helpers.graphc_cli``), so the installed entry point is covered too."""
from pathlib import Path

import pytest

from helpers import ROOT, cli, graphc_cli, user_error

CASES = sorted((ROOT / "tests" / "errors").glob("*.yaml"))
SUBPROCESS_CASES = ["malformed", "unknown_kind", "param_budget", "alias_bomb"]


def _commands(path: Path) -> list[str]:
    """check and build, or those a '# commands: build' line names (the parameter
    budget binds only commands that allocate the parameters)."""
    for line in path.read_text().splitlines():
        if line.startswith("# commands: "):
            return line[len("# commands: "):].split()
    return ["check", "build"]


GOLDEN_RUNS = [(c, p) for p in CASES for c in _commands(p)]


def _expectations(path: Path):
    expect = hint = None
    for line in path.read_text().splitlines():
        if line.startswith("# expect: "):
            expect = line[len("# expect: "):]
        elif line.startswith("# hint: "):
            hint = line[len("# hint: "):]
    return expect, hint


def _check_diagnostic(path: Path, result, out: Path):
    """``result``: the (exit code, stdout, stderr) of ``cli`` or ``graphc_cli``'s process."""
    expect, hint = _expectations(path)
    rel = path.relative_to(ROOT)
    where, message = expect.split(": error: ", 1)
    stderr = user_error(result, message, located=rel, where=where, hint=hint)
    lines = stderr.splitlines()
    assert lines[0] == f"{rel}:{expect}"
    # the offending line is quoted with a caret under the reported column
    col = int(expect.split(":")[1])
    assert lines[2].startswith("  " + " " * (col - 1) + "^")
    if hint:
        assert f"hint: {hint}" in stderr
    assert not out.exists()


@pytest.mark.parametrize("command, path", GOLDEN_RUNS, ids=[f"{c}-{p.stem}" for c, p in GOLDEN_RUNS])
def test_error_golden(path, command, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    rel = path.relative_to(ROOT)
    out = tmp_path / "out.onnx"
    args = [command, str(rel)] + (["-o", str(out)] if command == "build" else [])
    _check_diagnostic(path, cli(*args), out)


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_error_golden_through_the_real_cli(name, tmp_path):
    path = ROOT / "tests" / "errors" / f"{name}.yaml"
    out = tmp_path / "out.onnx"
    _check_diagnostic(path, graphc_cli("build", str(path.relative_to(ROOT)), "-o", str(out)), out)
