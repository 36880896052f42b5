"""Output files written whole or not at all.

Every file graphc writes (`graph -o`, `schema -o`, `run --output`, and the
model itself in graphc.lower.save_model) goes through a private temporary
directory beside the target and one rename, so an error, a full disk or
Ctrl-C never leaves a partial file or clobbers an earlier one. A path that
names a device or a pipe (``-o /dev/null``) is written into, not replaced; a
symlink is written through (its target is replaced, the link stays).

The temporary directories are named ``.graphc-<pid>-<host>-XXXX``: a process killed
where no cleanup can run (SIGKILL, a power cut) leaves one behind, and the
next write into that directory removes those of ours whose process is gone
(``private_temp_dir``). A file written over an existing one keeps its
permission bits (a 0600 file stays 0600).
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import GraphcError

TEMP_PREFIX = ".graphc-"


def _host_tag() -> str:
    """Six hex digits of this machine's name: a pid means nothing on another
    host sharing the directory (NFS), so only this host's leftovers are removed."""
    import hashlib
    import socket
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


@dataclass(frozen=True)
class OutputTarget:
    """Where an output lands. ``path``: the file that is replaced (a symlink's
    target, not the link: writing through a link keeps the link). ``stream``:
    the path names an existing device or pipe (``/dev/null``, ``/dev/stdout``,
    a FIFO), which is written into, never replaced by a regular file."""

    path: Path
    stream: bool = False

    @property
    def directory(self) -> Path:
        return self.path.parent if str(self.path.parent) else Path(".")


def output_target(path: str | os.PathLike) -> OutputTarget:
    """Resolve an output path before any work is done; refuses a missing
    directory, a directory as the target, and paths the system rejects."""
    p = Path(path)
    if not str(path):            # Path('') is '.', which would be reported as "cannot write .: a directory"
        raise GraphcError("the output path is empty", hint="give a file name")
    if str(path).endswith(("/", os.sep)) and not p.is_dir():
        # Path() drops the slash: 'newdir/' would silently become a file named 'newdir'
        raise GraphcError(f"cannot write {path}: a path ending in '/' names a directory, and {p} is none",
                          hint=f"give a file name, e.g. {p}/model.onnx, after creating the directory")
    try:
        st = os.stat(p)                          # follows symlinks
    except FileNotFoundError:
        st = None
    except OSError as exc:                       # a name too long, a symlink loop, ...
        raise GraphcError(f"cannot write {p}: {exc.strerror or exc}") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise GraphcError(f"cannot write {p}: it is a directory")
    if st is not None and not stat.S_ISREG(st.st_mode):
        return OutputTarget(p, stream=True)
    target = OutputTarget(Path(os.path.realpath(p)) if p.is_symlink() else p)
    directory = target.directory
    if not directory.exists():
        raise GraphcError(f"cannot write {p}: directory {directory} does not exist")
    if not directory.is_dir():
        raise GraphcError(f"cannot write {p}: {directory} is not a directory")
    return target


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:             # EPERM: alive, someone else's
        return True
    return True


def remove_stale_temporaries(directory: Path) -> None:
    """Remove ``.graphc-<pid>-<host>-*`` directories left in ``directory`` by
    graphc processes that were killed without cleanup: only ours (same owner,
    our naming, this host) and only stale (their pid no longer runs). Best
    effort: a directory we cannot list or remove is left alone."""
    me = os.getuid() if hasattr(os, "getuid") else None
    host = _host_tag()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for e in entries:
        if not e.name.startswith(TEMP_PREFIX):
            continue
        pid_text, _, rest = e.name[len(TEMP_PREFIX):].partition("-")
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or not rest.startswith(host + "-"):
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or (me is not None and st.st_uid != me):
            continue
        if not _pid_alive(int(pid_text)):
            shutil.rmtree(e.path, ignore_errors=True)


def private_temp_dir(target: OutputTarget) -> str:
    """A new private directory beside the target (the system's temporary
    directory for a device or pipe), after removing stale ones of ours.
    Call it with signals deferred (graphc.interrupt.deferred) so that the
    directory never exists unrecorded by the caller's cleanup."""
    directory = None if target.stream else target.directory
    remove_stale_temporaries(Path(tempfile.gettempdir()) if directory is None else directory)
    return tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-{_host_tag()}-", dir=directory)


def replace_keeping_mode(tmp: str, dest: Path) -> None:
    """os.replace, with the permission bits of the file it replaces (a 0600
    model stays 0600; a new file gets the umask's)."""
    try:
        old_mode = stat.S_IMODE(os.stat(dest).st_mode)
    except FileNotFoundError:
        old_mode = None
    if old_mode is not None:
        os.chmod(tmp, old_mode)
    os.replace(tmp, dest)


def put_in_place(tmp: str, target: OutputTarget) -> None:
    """The last step of every write: rename the finished temporary over the
    target (with the permission bits of the file it replaces), or copy it
    into a device or pipe."""
    if target.stream:
        with open(tmp, "rb") as src, open(target.path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    else:
        replace_keeping_mode(tmp, target.path)


def write_atomic(path: str | os.PathLike, data: str | bytes | Callable[[BinaryIO], object]) -> None:
    """Write ``data`` (text, bytes, or a function that writes to the open
    file) to a temporary file, then rename it over ``path``.
    Any OSError on the way (no permission, a full disk) is a GraphcError; an
    earlier file is left as it was and no temporary is left behind. The file
    gets the usual permissions (the umask's), not mkstemp's owner-only ones."""
    from .interrupt import checkpoint, deferred, terminate_as_interrupt
    p = path
    target = output_target(p)
    tmp_dir = None
    try:
        with terminate_as_interrupt():        # SIGTERM/SIGHUP clean up like Ctrl-C
            with deferred():                  # no window where the directory exists unrecorded
                # a device or pipe gets the finished bytes too: an error half way leaves nothing in it
                tmp_dir = private_temp_dir(target)
            tmp = os.path.join(tmp_dir, target.path.name)
            with open(tmp, "wb") as f:
                if callable(data):
                    data(f)
                else:
                    f.write(data.encode() if isinstance(data, str) else data)
            checkpoint()
            with deferred():
                put_in_place(tmp, target)
    except OSError as exc:
        raise GraphcError(f"cannot write {p}: {exc.strerror or exc}",
                          hint="check that the directory is writable and the disk has room") from None
    finally:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
