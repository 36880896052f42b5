"""`graphc graph -o` and `graphc schema -o` write through atomic_write.write_atomic:
whole or not at all. A directory that is missing or not writable, a path that
is a directory, or a full disk is a clear error (exit 2, no traceback) that
leaves an earlier file as it was and no temporary behind."""
from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

import pytest

from graphc import atomic_write
from helpers import SPECS, cli, graphc_cli, user_error

SPEC = str(SPECS / "mlp.yaml")


def assert_clean_failure(result, message: str, directory: Path) -> None:
    """``result``: cli's (exit code, stdout, stderr)."""
    err = user_error(result, message)
    assert err.startswith("graphc: error: cannot write"), err
    assert not [p for p in directory.iterdir() if p.name.startswith(".graphc-")], list(directory.iterdir())


@pytest.fixture
def earlier(tmp_path) -> Path:
    out = tmp_path / "g.dot"
    out.write_text("earlier\n")
    return out


def test_writes_the_file_with_ordinary_permissions(tmp_path):
    out = tmp_path / "g.dot"
    rc, _, err = cli("graph", SPEC, "--format", "dot", "-o", out)
    assert rc == 0, err
    assert out.read_text().startswith("digraph")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask      # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["g.dot"]


def test_missing_directory_and_directory_targets(tmp_path):
    result = cli("graph", SPEC, "-o", tmp_path / "nope" / "g.dot")
    assert_clean_failure(result, "does not exist", tmp_path)
    result = cli("graph", SPEC, "-o", tmp_path)
    assert_clean_failure(result, "it is a directory", tmp_path)
    result = cli("schema", "-o", tmp_path / "nope" / "s.json")
    assert_clean_failure(result, "does not exist", tmp_path)


def test_read_only_directory(tmp_path, earlier):
    tmp_path.chmod(0o555)
    try:
        with contextlib.suppress(PermissionError), open(tmp_path / "probe", "w"):
            pytest.skip("this user can write into a read-only directory (root)")
        result = cli("graph", SPEC, "-o", earlier)
        assert_clean_failure(result, "Permission denied", tmp_path)
        assert earlier.read_text() == "earlier\n"
    finally:
        tmp_path.chmod(0o755)
        with contextlib.suppress(FileNotFoundError):
            (tmp_path / "probe").unlink()


class _FullDisk:
    """A file whose writes fail part-way, as on a full disk."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.f.write(data[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_leaves_the_earlier_file_and_no_temporary(tmp_path, earlier, monkeypatch):
    real_open = open
    monkeypatch.setattr(atomic_write, "open", lambda f, mode="r", *a, **k: _FullDisk(real_open(f, mode, *a, **k)),
                        raising=False)
    result = cli("graph", SPEC, "-o", earlier)
    assert_clean_failure(result, os.strerror(errno.ENOSPC), tmp_path)
    assert earlier.read_text() == "earlier\n"


@pytest.mark.parametrize("step", ["mkdtemp", "replace"])
def test_permission_denied_at_any_step(tmp_path, earlier, monkeypatch, step):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    if step == "mkdtemp":
        monkeypatch.setattr(atomic_write.tempfile, "mkdtemp", denied)
    else:
        monkeypatch.setattr(atomic_write.os, "replace", denied)
    result = cli("graph", SPEC, "-o", earlier)
    assert_clean_failure(result, "Permission denied", tmp_path)
    assert earlier.read_text() == "earlier\n"


# --- targets that are not regular files: written into or through, never replaced

def _read_fifo_in_background(path: Path) -> tuple[list, "threading.Thread"]:
    import threading
    got: list = []
    reader = threading.Thread(target=lambda: got.append(path.read_bytes()), daemon=True)
    reader.start()
    return got, reader


@pytest.mark.parametrize("command", [["build", SPEC, "-q", "-o"], ["schema", "-o"], ["graph", SPEC, "-o"]])
def test_a_fifo_is_written_into_not_replaced(tmp_path, command):
    """`-o /dev/null` once replaced the device with a regular file (as root):
    a device or pipe is now written into. A FIFO stands in for the device here."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    regular = tmp_path / "regular.out"
    assert cli(*command, regular)[0] == 0
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got, reader = _read_fifo_in_background(fifo)
    rc, _, err = cli(*command, fifo)
    reader.join(timeout=30)
    assert rc == 0, err
    assert stat.S_ISFIFO(os.stat(fifo).st_mode), "the FIFO was replaced by a regular file"
    assert got == [regular.read_bytes()]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe", "regular.out"]


def test_a_symlink_is_written_through(tmp_path):
    (tmp_path / "real.onnx").write_bytes(b"old")
    (tmp_path / "link.onnx").symlink_to("real.onnx")
    assert cli("build", SPEC, "-q", "-o", tmp_path / "plain.onnx")[0] == 0
    assert cli("build", SPEC, "-q", "-o", tmp_path / "link.onnx")[0] == 0
    assert (tmp_path / "link.onnx").is_symlink()
    assert (tmp_path / "real.onnx").read_bytes() == (tmp_path / "plain.onnx").read_bytes()


def test_build_to_stdout_keeps_the_summary_off_the_model_bytes(tmp_path):
    assert cli("build", SPEC, "-q", "-o", tmp_path / "plain.onnx")[0] == 0
    done = graphc_cli("build", SPEC, "-o", "/dev/stdout", text=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (tmp_path / "plain.onnx").read_bytes()
    assert b"wrote /dev/stdout" in done.stderr


def test_an_output_under_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "spec.yaml").write_text("x")
    user_error(cli("build", SPEC, "-o", tmp_path / "spec.yaml" / "x.onnx"), "Not a directory")
