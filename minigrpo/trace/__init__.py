"""Traces: every optimizer update of a run, recorded for replay (format ``minigrpo-trace``).

Write with :class:`TraceWriter`, read with :func:`load`, check with :func:`validate`;
the format is documented field by field in ``docs/trace-format.md``.
"""

from .reader import LazyStep, TraceWarning, load, read_index, read_meta, trace_dir, trace_warnings_as_lines
from .schema import (
    FORMAT_NAME,
    FORMAT_VERSION,
    Group,
    Meta,
    Probe,
    ProbePosition,
    Step,
    Trace,
    TraceError,
)
from .validate import validate
from .writer import TraceWriter, new_meta

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Group",
    "LazyStep",
    "Meta",
    "Probe",
    "ProbePosition",
    "Step",
    "Trace",
    "TraceError",
    "TraceWarning",
    "trace_warnings_as_lines",
    "TraceWriter",
    "load",
    "new_meta",
    "read_index",
    "read_meta",
    "trace_dir",
    "validate",
]
