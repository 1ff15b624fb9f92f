"""Reading a payload (``payloads/*.npz``) without trusting it: no pickle, no file outside the trace,
no array larger than a trace array can be, each key of the dtype the format gives it.
"""

from __future__ import annotations

import os
import stat

import numpy as np

from .fields import FIX_DAMAGED, FIX_PAYLOAD, Where, one_line
from .layout import PAYLOAD_DIR
from .schema import TraceError

MAX_ARRAY_BYTES = 2**30  # one array of a payload, uncompressed (a real one is a few MB at most)


def inside(file: str) -> None:
    """Refuse a file that resolves outside its trace directory (a symlink planted in a trace)."""
    trace_dir = os.path.dirname(file)
    if os.path.basename(trace_dir) == PAYLOAD_DIR:
        trace_dir = os.path.dirname(trace_dir)
    real, root = os.path.realpath(file), os.path.realpath(trace_dir)
    if os.path.commonpath([real, root]) != root:
        raise TraceError(one_line(f"{file}: resolves to {real}, outside the trace directory {root}; a trace "
                                  f"may only refer to its own files: copy the trace without links"))


def payload_problem(full: str) -> str | None:
    """Why a payload file cannot be opened ("is missing", "is not a file", ...), or None."""
    try:
        mode = os.stat(full).st_mode
    except FileNotFoundError:
        return "is missing" if not os.path.islink(full) else "is a link to nothing"
    except PermissionError:
        return "cannot be reached (no permission on its folder)"
    except OSError as exc:  # a symlink loop, a name too long, ...
        return f"cannot be reached ({exc.strerror or exc})"
    return None if stat.S_ISREG(mode) else "is not a file"


class Npz:
    """An open npz payload with checked, typed access to its arrays."""

    def __init__(self, path: str, rel: str, w: Where, field_name: str):
        self.full = full = os.path.join(path, rel)
        problem = payload_problem(full)
        if problem:
            raise w.error(field_name, f"payload file {rel} {problem} ({full})", FIX_PAYLOAD)
        inside(full)
        try:
            npz = np.load(full, allow_pickle=False)
        except PermissionError:
            raise TraceError(one_line(f"{full}: cannot be read (no permission); give your user read access to the "
                                      f"trace's files")) from None
        except ValueError as e:  # numpy: "... contains pickled data ...", or not an array file at all
            why = "not an archive of plain arrays" if "pickle" in str(e) else str(e).split(".")[0]
            raise TraceError(one_line(f"{full}: cannot be read as an npz archive ({why}); {FIX_DAMAGED}")) from None
        except Exception as e:  # noqa: BLE001 - any unreadable payload is one TraceError
            raise TraceError(one_line(f"{full}: cannot be read as an npz archive ({type(e).__name__}: {e}); "
                                      f"{FIX_DAMAGED}"))
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise TraceError(one_line(f"{full}: is a single .npy array, not an npz archive; {FIX_DAMAGED}"))
        self.npz = npz
        self.keys = set(npz.files)

    def __enter__(self) -> "Npz":
        return self

    def __exit__(self, *exc) -> None:
        self.npz.close()

    def get(self, key: str, kind: str) -> np.ndarray:
        if key not in self.keys:
            raise TraceError(one_line(f"{self.full}: key {key} is missing; the payload does not match its JSON "
                                      f"record: {FIX_DAMAGED}"))
        try:
            size = self.npz.zip.getinfo(key + ".npy").file_size
        except (KeyError, AttributeError):
            size = 0
        if size > MAX_ARRAY_BYTES:
            raise TraceError(one_line(f"{self.full}: key {key}: {size} bytes uncompressed, more than a trace array "
                                      f"can be ({MAX_ARRAY_BYTES}); {FIX_DAMAGED}"))
        try:
            a = self.npz[key]
        except ValueError as e:
            if "pickle" in str(e).lower() or "object arrays" in str(e).lower():
                raise TraceError(one_line(f"{self.full}: key {key}: holds a Python-object array, which minigrpo "
                                          f"never writes and will not unpickle; the file is not a minigrpo "
                                          f"payload: re-record the run"))
            raise TraceError(one_line(f"{self.full}: key {key}: cannot be read ({e}); {FIX_DAMAGED}"))
        except Exception as e:  # noqa: BLE001 - corrupt zip member, CRC error, truncated file...
            raise TraceError(one_line(f"{self.full}: key {key}: cannot be read ({type(e).__name__}: {e}); "
                                      f"{FIX_DAMAGED}"))
        if not isinstance(a, np.ndarray):
            raise TraceError(one_line(f"{self.full}: key {key}: is not a .npy array; {FIX_DAMAGED}"))
        if a.ndim != 1:
            raise TraceError(one_line(f"{self.full}: key {key}: shape {a.shape}, expected a 1-D array; "
                                      f"{FIX_DAMAGED}"))
        ok = {"i": a.dtype.kind in "iu", "b": a.dtype == np.bool_, "f": a.dtype.kind == "f"}[kind]
        if not ok:
            want = {"i": "int64 token ids", "b": "bool flags", "f": "floats"}[kind]
            raise TraceError(one_line(f"{self.full}: key {key}: dtype {a.dtype}, expected {want}; {FIX_DAMAGED}"))
        return a.astype(np.int64, copy=False) if kind == "i" else a
