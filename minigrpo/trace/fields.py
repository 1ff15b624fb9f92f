"""Reading a trace's JSON without trusting it: each field with the type the format gives it.

A field that is missing or of the wrong type raises :class:`TraceError` with one line,
``FILE[ line N]: field F: what is wrong; what to do`` (the ``FIX_*`` texts say what to do).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Optional

import numpy as np

from .layout import PAYLOAD_DIR
from .schema import TraceError

FIX_DAMAGED = "the file is damaged: re-record the run or restore the trace from a copy"
FIX_WRITER = "the trace was not written by a compatible minigrpo TraceWriter: re-record it with this minigrpo"
FIX_PAYLOAD = "copy the whole trace directory, payloads/ included, or re-record the run"
FIX_MIDDLE = ("the file is damaged at this line: restore it from a copy, or cut the file just before this line "
              "to keep the records before it")


def one_line(text: str) -> str:
    return " ".join(str(text).splitlines())


class Where:
    """A place in a trace, to build one-line errors."""

    def __init__(self, file: str, line: Optional[int] = None):
        self.file = file
        self.line = line

    def error(self, field_name: Optional[str], problem: str, fix: str) -> TraceError:
        loc = self.file + (f" line {self.line}" if self.line is not None else "")
        what = f"field {field_name}: " if field_name else ""
        return TraceError(one_line(f"{loc}: {what}{problem}; {fix}"))


def type_name(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_FLOAT_MAX = int(np.finfo(np.float64).max)


def is_num(v: Any) -> bool:
    """A JSON number that fits a float (or null)."""
    if isinstance(v, int) and not isinstance(v, bool):
        return abs(v) <= _FLOAT_MAX
    return v is None or isinstance(v, float)


def need(d: dict, key: str, w: Where, prefix: str):
    if key not in d:
        raise w.error(prefix + key, "is missing", FIX_WRITER)
    return d[key]


def bad(w: Where, name: str, want: str, v: Any) -> TraceError:
    return w.error(name, f"must be {want}, got {type_name(v)}", FIX_WRITER)


_INT64_MAX = 2 ** 63 - 1  # every integer of the format is an int64 once read (steps, ids, positions)


def int_at(d, key, w, prefix="", minimum=None) -> int:
    v = need(d, key, w, prefix)
    if not is_int(v):
        raise bad(w, prefix + key, "an integer", v)
    if minimum is not None and v < minimum:
        raise w.error(prefix + key, f"{v} is below {minimum}", FIX_WRITER)
    if abs(v) > _INT64_MAX:
        raise w.error(prefix + key, f"{v} does not fit a 64-bit integer", FIX_WRITER)
    return v


def str_at(d, key, w, prefix="", nullable=False) -> Optional[str]:
    v = need(d, key, w, prefix)
    if v is None and nullable:
        return None
    if not isinstance(v, str):
        raise bad(w, prefix + key, "a string" + (" or null" if nullable else ""), v)
    return v


def num_at(d, key, w, prefix="") -> float:
    v = need(d, key, w, prefix)
    if not is_num(v):
        raise bad(w, prefix + key, "a number or null", v)
    return math.nan if v is None else float(v)


def list_at(d, key, w, prefix="") -> list:
    v = need(d, key, w, prefix)
    if not isinstance(v, list):
        raise bad(w, prefix + key, "a list", v)
    return v


def dict_at(d, key, w, prefix="") -> dict:
    v = need(d, key, w, prefix)
    if not isinstance(v, dict):
        raise bad(w, prefix + key, "an object", v)
    return v


def str_list_at(d, key, w, prefix="") -> list[str]:
    v = list_at(d, key, w, prefix)
    for i, x in enumerate(v):
        if not isinstance(x, str):
            raise bad(w, f"{prefix}{key}[{i}]", "a string", x)
    return v


def num_array(v: Any, w: Where, name: str) -> np.ndarray:
    if not isinstance(v, list):
        raise bad(w, name, "a list of numbers", v)
    for i, x in enumerate(v):
        if not is_num(x):
            raise bad(w, f"{name}[{i}]", "a number or null", x)
    return np.array([math.nan if x is None else x for x in v], dtype=np.float64).reshape(len(v))


def bool_array(v: Any, w: Where, name: str) -> np.ndarray:
    if not isinstance(v, list):
        raise bad(w, name, "a list of booleans", v)
    for i, x in enumerate(v):
        if not isinstance(x, bool):
            raise bad(w, f"{name}[{i}]", "a boolean", x)
    return np.array(v, dtype=np.bool_).reshape(len(v))


def payload_at(d, key, w, nullable=False) -> Optional[str]:
    rel = str_at(d, key, w, nullable=nullable)
    if rel is None:
        return None
    parts = rel.split("/")
    if (len(parts) != 2 or parts[0] != PAYLOAD_DIR or not parts[1].endswith(".npz") or parts[1].startswith(".")
            or "\\" in rel or parts[1] in ("", "..")):
        raise w.error(key, f"{rel!r} is not a payload name of the form payloads/NAME.npz", FIX_WRITER)
    return rel


def parse_json(raw: bytes, w: Where) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise w.error(None, f"is not UTF-8 text ({e.reason} at byte {e.start})", FIX_DAMAGED if w.line is None
                      else FIX_MIDDLE)
    if not text.strip():
        raise w.error(None, "is an empty line", FIX_MIDDLE) if w.line is not None else \
            w.error(None, "is empty", FIX_DAMAGED)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        where = f"line {e.lineno} column {e.colno}" if w.line is None else f"column {e.colno}"
        raise w.error(None, f"malformed JSON ({e.msg} at {where})", FIX_DAMAGED if w.line is None else FIX_MIDDLE)
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise w.error(None, f"malformed JSON ({str(e)[:80]})", FIX_DAMAGED if w.line is None else FIX_MIDDLE)
    except RecursionError:
        raise w.error(None, "malformed JSON (nested too deeply)", FIX_DAMAGED)
    if _SURROGATE_ESCAPE.search(text):  # a \udXXX escape not paired into one character is no text
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            lone = e.object[e.start:e.end].encode("unicode_escape").decode()
            raise w.error(None, f"holds a lone UTF-16 surrogate escape ({lone}), which is not text",
                          FIX_DAMAGED if w.line is None else FIX_MIDDLE)
    return obj


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
