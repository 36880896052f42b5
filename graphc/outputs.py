"""Output files written whole or not at all.

Every file graphc writes (`graph -o`, `schema -o`, `run --output`, and the
model itself in graphc.lower.save_model) goes through a private temporary
directory beside the target and one rename, so an error, a full disk or
Ctrl-C never leaves a partial file or clobbers an earlier one. A path that
names a device or a pipe (``-o /dev/null``) is written into, not replaced; a
symlink is written through (its target is replaced, the link stays).
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


def put_in_place(tmp: str, target: OutputTarget) -> None:
    """The last step of every write: rename the finished temporary over the
    target, or copy it into a device or pipe."""
    if target.stream:
        with open(tmp, "rb") as src, open(target.path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    else:
        os.replace(tmp, target.path)


def write_atomic(path: str | os.PathLike, data: str | bytes | Callable[[BinaryIO], object]) -> None:
    """Write ``data`` (text, bytes, or a function that writes to the open
    file) to a temporary file, then rename it over ``path``.
    Any OSError on the way (no permission, a full disk) is a GraphcError; an
    earlier file is left as it was and no temporary is left behind. The file
    gets the usual permissions (the umask's), not mkstemp's owner-only ones."""
    p = Path(path)
    target = output_target(p)
    tmp_dir = None
    try:
        # a device or pipe gets the finished bytes too: an error half way leaves nothing in it
        tmp_dir = tempfile.mkdtemp(prefix=".graphc-", dir=None if target.stream else target.directory)
        tmp = os.path.join(tmp_dir, target.path.name)
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
        put_in_place(tmp, target)
    except OSError as exc:
        raise GraphcError(f"cannot write {p}: {exc.strerror or exc}",
                          hint="check that the directory is writable and the disk has room") from None
    finally:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
