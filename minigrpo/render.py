"""``minigrpo render``: run the Manim scenes of ``scenes/`` on a trace.

Each scene is rendered by Manim in a subprocess (``python -m manim render -q? scenes/NAME.py
Class``) from the repository root, so ``manim.cfg`` (media_dir = renders) applies; the
trace, step range and probe travel as environment variables that the scenes read
(``scenes/components/data.py``):

=====================  ==============================================
``MINIGRPO_TRACE``      trace directory (GRPO for most scenes)
``MINIGRPO_PPO_TRACE``  PPO trace (``ppo_vs_grpo`` only)
``MINIGRPO_STEPS``      ``a:b`` (a <= step < b), ``a:`` or ``a``
``MINIGRPO_PROBE``      probe index inside the first chosen step
=====================  ==============================================

Videos land in ``renders/videos/<scene>/<quality>/<Class>.mp4``. Manim writes each one under a
hidden temp name (``.<Class>.partial.mp4``, via ``-o``) that is renamed into place only when the
render succeeded, so an interrupted render never leaves a truncated video under the real name
(and keeps the previous good one).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Union

from . import faults

REPO_ROOT = Path(__file__).resolve().parents[1]
SCENES_DIR = REPO_ROOT / "scenes"

# scene name (file scenes/NAME.py) -> Scene class
SCENES: dict[str, str] = {
    "ppo_logits": "PPOLogits",
    "grpo_advantage": "GRPOAdvantage",
    "clip_surrogate": "ClipSurrogate",
    "kl_penalty": "KLPenalty",
    "ppo_vs_grpo": "PPOvsGRPO",
    "training_overview": "TrainingOverview",
}
# scenes that replay GRPO group advantages, so they refuse a PPO --trace
GRPO_ONLY = ("grpo_advantage", "ppo_vs_grpo")
QUALITIES = {"l": "480p15", "m": "720p30", "h": "1080p60", "k": "2160p60"}
_STEPS = re.compile(r"^\s*(\d+)?\s*:\s*(\d+)?\s*$|^\s*\d+\s*$")


def _err(msg: str) -> int:
    print(f"minigrpo: {msg}", file=sys.stderr)
    return 2


def scene_name(name: str) -> Optional[str]:
    """Canonical scene name for ``name`` (file stem, path, or class name, any case), else None."""
    stem = Path(str(name)).stem if str(name).endswith(".py") else Path(str(name)).name
    low = stem.lower()
    for k, cls in SCENES.items():
        if low in (k, cls.lower()):
            return k
    return None


def _steps_text(steps) -> Optional[str]:
    if steps is None:
        return None
    if isinstance(steps, slice):
        return f"{'' if steps.start is None else steps.start}:{'' if steps.stop is None else steps.stop}"
    if isinstance(steps, range):
        return f"{steps.start}:{steps.stop}"
    if isinstance(steps, (tuple, list)) and len(steps) == 2:
        a, b = steps
        return f"{'' if a is None else a}:{'' if b is None else b}"
    return str(steps)


def find_trace(path: str | os.PathLike) -> Optional[Path]:
    """``path`` resolved: as given (the current directory for a relative path), else under the
    repository root; None when neither exists."""
    p = Path(path).expanduser()
    for candidate in (p, REPO_ROOT / p):
        if candidate.exists():
            return candidate.resolve()
    return None


def video_path(scene: str, quality: str = "l") -> Path:
    """Where Manim writes the video of ``scene`` at ``quality`` (with manim.cfg's media_dir)."""
    return REPO_ROOT / "renders" / "videos" / scene / QUALITIES[quality] / f"{SCENES[scene]}.mp4"


def _without(names: list[str], needing, why: str, log: Callable[[str], None]) -> list[str]:
    """``names`` without those in ``needing``, each skip logged with ``why``."""
    for name in names:
        if name in needing:
            log(f"minigrpo: skipping {name}: {why}")
    return [n for n in names if n not in needing]


def for_algo(names: list[str], algo: str, log: Callable[[str], None]) -> list[str]:
    """``names`` without the GRPO-only scenes when the trace's ``algo`` is not GRPO, each skip logged."""
    if algo == "grpo":
        return names
    return _without(names, GRPO_ONLY, f"it needs a GRPO --trace and this trace is {algo.upper()}", log)


NEEDS_PROBES = ("ppo_logits", "kl_penalty", "ppo_vs_grpo")  # they replay probed completions token by token


def with_probes(names: list[str], trace: Path, log: Callable[[str], None]) -> list[str]:
    """``names`` without the scenes that replay probes when the trace recorded none in any step
    (``--probe-completions 0``), each skip logged; the rest (advantages, the clipped objective,
    the whole run) still render. An unreadable trace is left for the scenes to report."""
    from .trace import TraceError, read_index, trace_dir

    try:
        steps = read_index(trace_dir(trace)).steps
    except (TraceError, OSError):
        return names
    if not steps or any(rec.probes for rec in steps):  # no update yet: the scenes say so themselves
        return names
    return _without(names, NEEDS_PROBES, "it replays probed completions and this trace recorded none "
                                         "(trained with --probe-completions 0)", log)


NEEDS_KL = ("kl_penalty",)  # it shows the KL to the reference model, token by token


def with_kl(names: list[str], kl_recorded: bool, log: Callable[[str], None]) -> list[str]:
    """``names`` without the scenes about the KL when the trace holds none (``Meta.kl_recorded``: a TRL run
    with β = 0 has no reference model), each skip logged."""
    if kl_recorded:
        return names
    return _without(names, NEEDS_KL, "this TRL run had beta = 0, so TRL loaded no reference model and the trace "
                                     "holds no KL", log)


def _applicable(names: list[str], trace: Path) -> list[str]:
    """:func:`for_algo`, :func:`with_kl` and :func:`with_probes` for the trace at ``trace`` (said on
    stderr). An unreadable meta.json is left for the scenes to report in their own words."""
    from .trace import TraceError, read_meta, trace_dir

    say = lambda line: print(line, file=sys.stderr)  # noqa: E731
    try:
        meta = read_meta(trace_dir(trace))
    except (TraceError, OSError):
        return names
    return with_probes(with_kl(for_algo(names, meta.algo, say), meta.kl_recorded, say), trace, say)


def render(
    scene: Optional[str],
    trace: Optional[str],
    quality: str = "l",
    steps: Union[str, tuple, slice, range, None] = None,
    probe: Union[int, str, None] = None,
    all_scenes: bool = False,
    ppo_trace: Optional[str] = None,
    preview: bool = False,
    media_dir: Optional[str] = None,
) -> int:
    """Render one scene (or every scene with ``all_scenes``); returns Manim's exit code.

    With ``all_scenes`` and a PPO ``trace``, the GRPO-only scenes are skipped (one line each
    on stderr); the others stop at the first failure.

    ``trace`` / ``ppo_trace`` default to the demo traces under ``traces/``; ``steps`` is
    ``"a:b"`` (a <= step < b), ``"a:"`` or a single step; ``probe`` an index into the first
    chosen step's probes; ``media_dir`` overrides manim.cfg's ``renders``. Bad arguments return 2 with a one-line message; a scene that
    fails on its input exits 1 with a one-line ``minigrpo: ...`` message.
    """
    valid = ", ".join(SCENES)
    if all_scenes:
        names = list(SCENES)
    elif not scene:
        return _err(f"no scene given; pass --scene NAME (one of: {valid}) or --all")
    else:
        name = scene_name(scene)
        if name is None:
            return _err(f"unknown scene {scene!r}; valid scenes: {valid}")
        names = [name]
    quality = str(quality).lstrip("-q") or "l"
    if quality not in QUALITIES:
        return _err(f"quality {quality!r} is not one of l, m, h, k (480p15, 720p30, 1080p60, 2160p60)")

    env = os.environ.copy()
    env.setdefault("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env["PYTHONPATH"] else []))
    for var, path in (("MINIGRPO_TRACE", trace), ("MINIGRPO_PPO_TRACE", ppo_trace)):
        if path:
            found = find_trace(path)
            if found is None:
                flag = "--trace" if var == "MINIGRPO_TRACE" else "--ppo-trace"
                return _err(f"no trace at {path} (looked in the current directory and in {REPO_ROOT}); "
                            f"pass {flag} a trace directory written by `minigrpo train`")
            env[var] = str(found)
    st = _steps_text(steps)
    if st is not None:
        if not _STEPS.match(st):
            return _err(f"--steps {st!r} is not a step range; use a:b (a <= step < b), a: or a single step")
        env["MINIGRPO_STEPS"] = st
    if probe is not None and str(probe).strip() != "":
        try:
            env["MINIGRPO_PROBE"] = str(int(probe))
        except ValueError:
            return _err(f"--probe {probe!r} is not an integer probe index")

    if media_dir:
        extra = ["--media_dir", str(Path(media_dir).resolve())]
    else:
        extra = [] if (REPO_ROOT / "manim.cfg").exists() else ["--media_dir", "renders"]
    if all_scenes and trace:
        names = _applicable(names, Path(env["MINIGRPO_TRACE"]))
    rc = 0
    for name in names:
        partial_name = f".{SCENES[name]}.partial"
        cmd = [sys.executable, "-m", "manim", "render", f"-q{quality}", *extra, "-o", partial_name,
               *(["-p"] if preview else []), str(Path("scenes") / f"{name}.py"), SCENES[name]]
        out = (Path(media_dir).resolve() / "videos" / name / QUALITIES[quality] / f"{SCENES[name]}.mp4"
               if media_dir else video_path(name, quality))
        partial = out.with_name(partial_name + ".mp4")
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=str(REPO_ROOT), env=env)
        if rc != 0:
            if len(names) > 1:
                print(f"minigrpo: scene {name} failed (exit {rc}); stopped", file=sys.stderr)
            return rc
        if not partial.is_file():
            return _err(f"manim reported success but wrote no video at {partial}")
        faults.hit("render")
        os.replace(partial, out)
        print(f"minigrpo: rendered {name} in {time.perf_counter() - t0:.1f}s -> {out}")
    return rc
