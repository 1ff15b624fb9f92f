"""Files that survive a crash: write under a hidden temp name, then rename; mend a torn last line.

The trace writer, the checkpoints, the plots and the lecture all write through here, so a
run killed at any instant leaves each file either as it was or complete, never half written.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional

TMP_PREFIX = "."  # temp files are hidden: ".step_000012.npz.tmp"
TMP_SUFFIX = ".tmp"


def temp_name(name: str) -> str:
    """The hidden name a file is written under before it is renamed into place."""
    return TMP_PREFIX + name + TMP_SUFFIX


def is_temp(name: str) -> bool:
    """True for a file name a writer killed mid-write leaves behind (never a finished file)."""
    return name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX)


def fsync_dir(path: str) -> None:
    """Make a rename durable (power loss); harmless no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a regular file takes a line in one call)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def atomic_write(path: str, write: Callable, durable: bool = True) -> int:
    """``write(fileobj)`` into a hidden temp file next to ``path``, then rename it onto ``path``.

    Returns the bytes written. ``durable`` fsyncs the file and the directory, so the rename
    also survives a power loss; without it the file is still whole or absent after a crash
    of the process.
    """
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, temp_name(name))
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
            size = f.tell()
    except BaseException:  # a full disk, an interrupt: leave no partial temp file behind
        remove_quietly(tmp)
        raise
    os.replace(tmp, path)
    if durable:
        fsync_dir(directory or ".")
    return size


def write_via_path(final: str | os.PathLike, make: Callable[[Path], None]) -> Path:
    """``make(tmp)`` writes a file at the path it is given; it becomes ``final`` only once complete.

    For writers that want a path, not a file object (matplotlib, ffmpeg). The temp path is
    unique (two processes writing the same file do not collide), hidden, in ``final``'s
    folder (so the rename is atomic) and ends in ``final``'s suffix (ffmpeg picks its
    format from it); the file gets the permissions of an ordinary new file.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{final.stem}.", suffix=f"{TMP_SUFFIX}{final.suffix}",
                                dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
        make(tmp)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    return final


def repair_tail(path: str) -> Optional[str]:
    """Make ``path`` end at a line boundary; returns a note when something was dropped.

    A torn last line (killed mid-write) that is not valid JSON is cut off; a complete JSON
    object that only lacks its newline gets the newline.
    """
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        data = f.read()
    if not data or data.endswith(b"\n"):
        return None
    cut = data.rfind(b"\n") + 1
    tail = data[cut:]
    try:
        ok = isinstance(json.loads(tail.decode("utf-8")), dict)
    except (UnicodeDecodeError, ValueError):
        ok = False
    if ok:
        with open(path, "ab") as f:
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
        return None
    with open(path, "r+b") as f:
        f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())
    return f"{path}: dropped a torn last line of {len(tail)} bytes (the writer was killed mid-write)"


def complete_lines(path: str) -> list[bytes]:
    """The newline-terminated, non-blank lines of a jsonl file (a torn tail is skipped)."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    return [line + b"\n" for line in data.split(b"\n")[:-1] if line.strip()]
