"""Output files written whole or not at all.

Every file graphc writes (`graph -o`, `schema -o`, `run --output`, and the
model itself in graphc.lower.save_model) goes through a private temporary
directory beside the target and one rename, so an error, a full disk or
Ctrl-C never leaves a partial file or clobbers an earlier one.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import GraphcError


def output_directory(path: str | os.PathLike) -> Path:
    """The directory an output goes into; refuses a missing directory or a
    target that is itself a directory (before any work is done)."""
    p = Path(path)
    directory = p.parent if str(p.parent) else Path(".")
    if not directory.is_dir():
        raise GraphcError(f"cannot write {p}: directory {directory} does not exist")
    if p.is_dir():
        raise GraphcError(f"cannot write {p}: it is a directory")
    return directory


def write_atomic(path: str | os.PathLike, data: str | bytes | Callable[[BinaryIO], object]) -> None:
    """Write ``data`` (text, bytes, or a function that writes to the open
    file) to a temporary file, then rename it over ``path``.
    Any OSError on the way (no permission, a full disk) is a GraphcError; an
    earlier file is left as it was and no temporary is left behind. The file
    gets the usual permissions (the umask's), not mkstemp's owner-only ones."""
    p = Path(path)
    directory = output_directory(p)
    tmp_dir = None
    try:
        tmp_dir = tempfile.mkdtemp(prefix=".graphc-", dir=directory)
        tmp = os.path.join(tmp_dir, p.name)
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, p)
    except OSError as exc:
        raise GraphcError(f"cannot write {p}: {exc.strerror or exc}",
                          hint="check that the directory is writable and the disk has room") from None
    finally:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
