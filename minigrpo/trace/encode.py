"""What a trace stores, made storable: strict-JSON values and 1-D arrays of the format's dtypes.

Nothing here imports torch; tensors are accepted duck-typed (``.detach()``).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
from typing import Any, Optional

import numpy as np


def json_number(x: Any) -> Optional[float]:
    """A finite float, or None (JSON null) for NaN / +inf / -inf / None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def jsonable(obj: Any, where: str = "value") -> Any:
    """Plain JSON values from config-like objects; non-finite floats become null (strict JSON has no NaN)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        return json_number(obj)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: key {k!r} is not a string (JSON keys must be strings)")
            out[k] = jsonable(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist(), where)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj), where)
    if isinstance(obj, enum.Enum):
        return jsonable(obj.value, where)
    raise ValueError(f"{where}: {type(obj).__name__} value {obj!r} cannot be stored in JSON")


def dumps_line(obj: dict) -> bytes:
    """One compact JSON line (UTF-8, strict JSON: no NaN/Infinity literals) ending in \\n."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (text + "\n").encode("utf-8")


def to_numpy(x: Any) -> np.ndarray:
    """A numpy view of a tensor (bfloat16 widened to float32, which numpy lacks) or of any array-like."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch
        t = x.detach().cpu()
        if str(getattr(t, "dtype", "")) == "torch.bfloat16":
            t = t.float()
        x = t.numpy()
    return np.asarray(x)


def as_array(x: Any, kind: str, where: str) -> np.ndarray:
    """A 1-D numpy array of the canonical dtype for ``kind`` ("i", "b", "f"), or ValueError."""
    a = to_numpy(x)
    if a.ndim != 1:
        raise ValueError(f"{where}: expected a 1-D array, got shape {a.shape}")
    if a.dtype == object:
        raise ValueError(f"{where}: object arrays cannot be stored (numbers only)")
    if kind == "i":
        if a.size and a.dtype.kind not in "iu":
            raise ValueError(f"{where}: token ids must be integers, got dtype {a.dtype}")
        return a.astype(np.int64, copy=False)
    if kind == "b":
        if a.dtype != np.bool_:
            if a.dtype.kind not in "iu" or (a.size and not np.isin(a, (0, 1)).all()):
                raise ValueError(f"{where}: flags must be bool (or 0/1 integers), got dtype {a.dtype}")
            a = a.astype(np.bool_)
        return a
    if a.dtype.kind == "f":
        return a if a.dtype in (np.float32, np.float64) else a.astype(np.float32)
    if a.dtype.kind in "iub":
        return a.astype(np.float32)
    raise ValueError(f"{where}: expected floats, got dtype {a.dtype}")
