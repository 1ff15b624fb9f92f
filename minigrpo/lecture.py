"""``minigrpo lecture``: every scene of one trace as one lecture.

1. render the scenes in parallel Manim processes (a progress line per scene);
2. copy each video to ``segments/``, grab a still per chapter (``stills/``);
3. join the segments with ffmpeg's concat demuxer (stream copy when every segment has the
   same codec, size, frame rate and pixel format, else one re-encode) into ``lecture.mp4``
   with one chapter per scene (ffmetadata ``[CHAPTER]`` entries), and write the chapter
   list as ``chapters.txt`` (``MM:SS title``) and ``chapters.json``;
4. draw the run's figures (``minigrpo plot``) into ``plots/``;
5. write ``slides.html`` (:mod:`minigrpo.slides`): one static page, no network, that steps
   through the clips and the figures with the arrow keys, PageUp/PageDown, space or a click.

Every final file is written to a temp name and renamed into place, so an interrupted build
never leaves a half-written ``lecture.mp4``: the previous one stays until the new one is whole.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .files import write_via_path
from .render import QUALITIES, REPO_ROOT, SCENES, find_trace, for_algo, scene_name, with_kl, with_probes
from .slides import slides_html, timestamp
from .trace import trace_dir
from .trace.inspect import display_name

DEFAULT_TRACE = REPO_ROOT / "traces" / "demo-grpo-syllogism"
DEFAULT_PPO_TRACE = REPO_ROOT / "traces" / "demo-ppo-syllogism"
DEFAULT_OUT = REPO_ROOT / "renders" / "lecture"

# the lecture's order: where the signal comes from, the objective, the constraint, the model
# moving, the comparison, the whole run
CHAPTERS: dict[str, str] = {
    "grpo_advantage": "Group advantages: where GRPO's signal comes from",
    "clip_surrogate": "The clipped surrogate objective",
    "kl_penalty": "Staying close to the reference: the KL term",
    "ppo_logits": "One decision, update by update",
    "ppo_vs_grpo": "PPO's critic vs GRPO's group baseline",
    "training_overview": "The whole run at a glance",
}
LONG_FIRST = ("ppo_logits",)  # started first so the parallel build ends sooner


class LectureError(ValueError):
    """Bad input for ``minigrpo lecture``; the message is one line that says what to do."""


@dataclass
class Job:
    scene: str
    log: Path
    video: Path
    proc: Optional[subprocess.Popen] = None
    started: float = 0.0
    seconds: float = 0.0
    state: str = "queued"  # queued | running | done | failed
    animation: int = -1  # last "Animation N" Manim reported


@dataclass
class Chapter:
    index: int
    scene: str
    title: str
    segment: Path
    still: Path
    start: float = 0.0
    duration: float = 0.0
    info: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- small tools
def need_tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise LectureError(f"{name} is not on PATH; install ffmpeg (e.g. `apt-get install ffmpeg`) and run again")
    return path


def run_tool(cmd: list[str], what: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise LectureError(f"{what} failed (exit {done.returncode}): {last}")
    return done.stdout


def write_text(final: Path, text: str) -> Path:
    return write_via_path(final, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def probe(video: Path) -> dict:
    """Duration and video stream parameters of ``video`` (ffprobe)."""
    out = run_tool([need_tool("ffprobe"), "-v", "error", "-select_streams", "v:0", "-show_entries",
                    "stream=codec_name,width,height,pix_fmt,r_frame_rate:format=duration", "-of", "json", str(video)],
                   f"ffprobe {video}")
    data = json.loads(out)
    streams = data.get("streams") or []
    if not streams:
        raise LectureError(f"{video} has no video stream; delete it and build again")
    s = streams[0]
    return {"duration": float(data["format"]["duration"]), "codec": s.get("codec_name"), "width": s.get("width"),
            "height": s.get("height"), "pix_fmt": s.get("pix_fmt"), "fps": s.get("r_frame_rate")}


# ----------------------------------------------------------------------------- choosing scenes
def choose_scenes(scenes: Optional[str], algo: str, have_ppo: bool, log: Callable[[str], None],
                  trace: Optional[Path] = None, kl_recorded: bool = True) -> list[str]:
    if scenes:
        names = []
        for raw in scenes.split(","):
            if not raw.strip():
                continue
            name = scene_name(raw.strip())
            if name is None:
                raise LectureError(f"unknown scene {raw.strip()!r} in --scenes; valid scenes: {', '.join(CHAPTERS)}")
            names.append(name)
        if not names:
            raise LectureError("--scenes is empty; give a comma-separated list, e.g. --scenes ppo_logits,kl_penalty")
        names = [n for n in CHAPTERS if n in names]  # lecture order, no duplicates
    else:
        names = list(CHAPTERS)
    keep = with_kl(for_algo(names, algo, log), kl_recorded, log)
    if trace is not None:
        keep = with_probes(keep, trace, log)
    if "ppo_vs_grpo" in keep and not have_ppo:
        log("minigrpo: skipping ppo_vs_grpo: no PPO trace (pass --ppo-trace, a trace of `minigrpo train --algo ppo`)")
        keep.remove("ppo_vs_grpo")
    if not keep:
        raise LectureError("no scene left to render for this trace; pass a GRPO --trace or other --scenes")
    return keep


def _trace_dir(path, flag: str) -> Path:
    p = Path(trace_dir(find_trace(path) or Path(path).expanduser()))  # a run folder holds its trace in trace/
    if not (p / "meta.json").is_file():
        raise LectureError(f"no trace at {p} (no meta.json); pass {flag} a trace folder written by `minigrpo train`")
    return p.resolve()


# ----------------------------------------------------------------------------- rendering
class Progress:
    """One line per scene, redrawn in place on a terminal; on a pipe, one line per change."""

    def __init__(self, jobs: list[Job], stream=None):
        self.jobs, self.stream = jobs, stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.drawn = 0
        self.last: dict[str, str] = {}
        self.t0 = time.perf_counter()

    def line(self, job: Job) -> str:
        now = time.perf_counter()
        if job.state == "running":
            anim = f"animation {job.animation + 1}" if job.animation >= 0 else "starting"
            return f"  {job.scene:<18} rendering   {anim:<14} {now - job.started:6.1f}s"
        if job.state in ("done", "failed"):
            return f"  {job.scene:<18} {job.state:<11} {'':<14} {job.seconds:6.1f}s"
        return f"  {job.scene:<18} queued"

    def update(self) -> None:
        done = sum(j.state == "done" for j in self.jobs)
        head = f"minigrpo lecture: {done}/{len(self.jobs)} scenes rendered, {time.perf_counter() - self.t0:.0f}s"
        if self.tty:
            if self.drawn:
                self.stream.write(f"\x1b[{self.drawn}F")
            lines = [head] + [self.line(j) for j in self.jobs]
            self.stream.write("".join(f"\x1b[2K{line}\n" for line in lines))
            self.drawn = len(lines)
        else:
            for j in self.jobs:
                state = j.state if j.state != "running" else "rendering"
                if self.last.get(j.scene) != state:
                    self.last[j.scene] = state
                    if state != "queued":
                        self.stream.write(f"minigrpo lecture: {self.line(j).strip()}\n")
        self.stream.flush()


def _last_animation(log: Path) -> int:
    """The highest ``Animation N`` in Manim's log (its progress bars), -1 if none yet."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, log.stat().st_size - 4096))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return -1
    nums = [int(n) for n in re.findall(r"Animation (\d+)", tail)]
    return max(nums) if nums else -1


def _log_tail(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    mine = [ln for ln in lines if ln.startswith("minigrpo:")]
    return (mine or lines or [""])[-1][:300]


def render_scenes(names: list[str], env: dict, quality: str, jobs: int, out: Path,
                  stream=None, poll: float = 0.5) -> list[Job]:
    """Render ``names`` with up to ``jobs`` Manim processes at once; every job's state at the end."""
    media, logs = out / "media", out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    todo = [Job(n, logs / f"{n}.log", media / n / "videos" / n / QUALITIES[quality] / f"{SCENES[n]}.mp4")
            for n in names]
    order = sorted(todo, key=lambda j: j.scene not in LONG_FIRST)
    progress = Progress(todo, stream)
    running: list[Job] = []
    failed = False
    try:
        while order or running:
            while order and len(running) < jobs and not failed:
                job = order.pop(0)
                cmd = [sys.executable, "-m", "manim", "render", f"-q{quality}", "--media_dir", str(media / job.scene),
                       str(Path("scenes") / f"{job.scene}.py"), SCENES[job.scene]]
                job.video.unlink(missing_ok=True)  # a stale video must not pass for a fresh one
                with open(job.log, "wb") as logf:
                    job.proc = subprocess.Popen(cmd, cwd=str(REPO_ROOT), env=env, stdout=logf, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL)
                job.started, job.state = time.perf_counter(), "running"
                running.append(job)
            if failed:
                order.clear()
            time.sleep(poll)
            for job in list(running):
                job.animation = _last_animation(job.log)
                rc = job.proc.poll()
                if rc is None:
                    continue
                job.seconds = time.perf_counter() - job.started
                job.state = "done" if rc == 0 and job.video.is_file() else "failed"
                failed |= job.state == "failed"
                running.remove(job)
            progress.update()
    except BaseException:
        for job in running:
            if job.proc and job.proc.poll() is None:
                job.proc.terminate()
        for job in running:
            if job.proc:
                try:
                    job.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    job.proc.kill()
        raise
    return todo


def scene_env(trace: Path, ppo_trace: Optional[Path], steps: Optional[str]) -> dict:
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["MINIGRPO_TRACE"] = str(trace)
    if ppo_trace:
        env["MINIGRPO_PPO_TRACE"] = str(ppo_trace)
    if steps:
        env["MINIGRPO_STEPS"] = steps
    env.pop("MINIGRPO_PROBE", None)
    return env


# ----------------------------------------------------------------------------- assembling
def grab_still(video: Path, at: float, target: Path) -> Path:
    ffmpeg = need_tool("ffmpeg")
    return write_via_path(target, lambda tmp: run_tool(
        [ffmpeg, "-y", "-v", "error", "-ss", f"{max(0.0, at):.3f}", "-i", str(video), "-frames:v", "1",
         "-f", "image2", "-c:v", "png", str(tmp)], f"still of {video.name}"))


def ffmetadata(chapters: list[Chapter], title: str) -> str:
    def esc(text: str) -> str:  # ffmetadata escapes = ; # \ and newlines with a backslash
        for ch in "\\=;#\n":
            text = text.replace(ch, "\\" + ch)
        return text

    lines = [";FFMETADATA1", f"title={esc(title)}"]
    for c in chapters:
        lines += ["[CHAPTER]", "TIMEBASE=1/1000", f"START={round(c.start * 1000)}",
                  f"END={round((c.start + c.duration) * 1000)}", f"title={esc(f'{c.index}. {c.title}')}"]
    return "\n".join(lines) + "\n"


def uniform(infos: list[dict]) -> bool:
    keys = ("codec", "width", "height", "pix_fmt", "fps")
    return all(tuple(i[k] for k in keys) == tuple(infos[0][k] for k in keys) for i in infos)


def concat(chapters: list[Chapter], target: Path, title: str) -> tuple[Path, bool]:
    """Join the chapters' segments into ``target`` with chapter marks; (target, re-encoded?)."""
    ffmpeg = need_tool("ffmpeg")
    infos = [c.info for c in chapters]
    copy = uniform(infos)
    with tempfile.TemporaryDirectory(prefix=".concat-", dir=target.parent) as work:
        listing = Path(work) / "segments.txt"
        listing.write_text("".join("file '" + str(c.segment.resolve()).replace("'", "'\\''") + "'\n" for c in chapters))
        meta = Path(work) / "chapters.ffmetadata"
        meta.write_text(ffmetadata(chapters, title), encoding="utf-8")
        if copy:
            codec = ["-c", "copy"]
        else:  # one size, rate and pixel format for all: the first segment's
            w, h, fps = infos[0]["width"], infos[0]["height"], infos[0]["fps"]
            vf = (f"scale={w}:{h}:force_original_aspect_ratio=decrease,pad={w}:{h}:(ow-iw)/2:(oh-ih)/2:color=0x0f1117,"
                  f"fps={fps},format=yuv420p")
            codec = ["-vf", vf, "-c:v", "libx264", "-preset", "veryfast", "-crf", "18"]
        cmd = [ffmpeg, "-y", "-v", "error", "-f", "concat", "-safe", "0", "-i", str(listing), "-i", str(meta),
               "-map", "0:v:0", "-map_metadata", "1", "-map_chapters", "1", *codec, "-movflags", "+faststart", "-f", "mp4"]
        write_via_path(target, lambda tmp: run_tool([*cmd, str(tmp)], "ffmpeg concat"))
    return target, not copy


def chapters_text(chapters: list[Chapter]) -> str:
    return "".join(f"{timestamp(c.start)} {c.index}. {c.title}\n" for c in chapters)


def assemble(videos: list[tuple[str, str, Path]], out: Path, title: str, subtitle: str = "",
             figures: Optional[list[Path]] = None, build: Optional[dict] = None) -> dict:
    """Segments, stills, ``lecture.mp4`` with chapters, chapter lists and ``slides.html`` from rendered videos.

    ``videos`` is ``[(scene, chapter title, video), ...]`` in lecture order. Returns what
    ``chapters.json`` holds.
    """
    out.mkdir(parents=True, exist_ok=True)
    chapters: list[Chapter] = []
    start = 0.0
    for i, (scene, ch_title, video) in enumerate(videos, 1):
        stem = f"{i:02d}-{scene}"
        seg = write_via_path(out / "segments" / f"{stem}.mp4", lambda tmp, v=video: shutil.copyfile(v, tmp))
        info = probe(seg)
        c = Chapter(i, scene, ch_title, seg, out / "stills" / f"{stem}.png", start, info["duration"], info)
        grab_still(seg, c.duration - 0.5, c.still)
        chapters.append(c)
        start += c.duration
    # drop segments/stills of earlier builds that this one does not have
    keep = {c.segment.name for c in chapters} | {c.still.name for c in chapters}
    for folder in (out / "segments", out / "stills"):
        for f in folder.iterdir():
            if f.is_file() and f.name not in keep and not f.name.startswith("."):
                f.unlink()
    video, reencoded = concat(chapters, out / "lecture.mp4", title)
    result = {
        "title": title, "subtitle": subtitle, "video": "lecture.mp4", "duration": start, "reencoded": reencoded,
        "chapters": [{"index": c.index, "scene": c.scene, "title": c.title, "start": round(c.start, 3),
                      "end": round(c.start + c.duration, 3), "duration": round(c.duration, 3),
                      "segment": c.segment.relative_to(out).as_posix(), "still": c.still.relative_to(out).as_posix()}
                     for c in chapters],
        "figures": [Path(f).relative_to(out).as_posix() for f in (figures or [])],
        **({"build": build} if build else {}),
    }
    write_text(out / "chapters.txt", chapters_text(chapters))
    write_text(out / "chapters.json", json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    write_text(out / "slides.html", slides_html(result))
    return result


# ----------------------------------------------------------------------------- the command
def build_lecture(trace: Optional[str] = None, ppo_trace: Optional[str] = None, quality: str = "l", jobs: int = 0,
                  scenes: Optional[str] = None, steps: Optional[str] = None, out: Optional[str] = None,
                  plots: bool = True, log: Callable[[str], None] = print, stream=None) -> int:
    """Render, join and export; 0 when everything was written, 1 when a scene failed (nothing final replaced)."""
    from .trace import read_meta

    t0 = time.perf_counter()
    quality = str(quality).lstrip("-q") or "l"
    if quality not in QUALITIES:
        raise LectureError(f"quality {quality!r} is not one of l, m, h, k (480p15, 720p30, 1080p60, 2160p60)")
    if jobs < 0:
        raise LectureError(f"-j/--jobs {jobs} is negative; pass the number of scenes to render at once, "
                           f"or 0 for the CPU count")
    for tool in ("ffmpeg", "ffprobe"):
        need_tool(tool)
    trace_dir = _trace_dir(trace or DEFAULT_TRACE, "--trace")
    if ppo_trace:
        ppo_dir: Optional[Path] = _trace_dir(ppo_trace, "--ppo-trace")
    else:
        ppo_dir = DEFAULT_PPO_TRACE if (DEFAULT_PPO_TRACE / "meta.json").is_file() else None
    if steps is not None:
        from .render import _STEPS
        if not _STEPS.match(str(steps)):
            raise LectureError(f"--steps {steps!r} is not a step range; use a:b (a <= step < b), a: or a single step")
    meta = read_meta(str(trace_dir))
    names = choose_scenes(scenes, meta.algo, ppo_dir is not None, log, trace_dir, meta.kl_recorded)
    jobs = jobs or os.cpu_count() or 1
    out_dir = Path(out).expanduser().resolve() if out else DEFAULT_OUT
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LectureError(f"cannot create the output folder {out_dir}: {e.strerror or e}; choose another -o") from None

    log(f"minigrpo lecture: {len(names)} scene{'s' if len(names) > 1 else ''} at -q{quality} ({QUALITIES[quality]}), {min(jobs, len(names))} at a time, "
        f"trace {trace_dir} -> {out_dir}")
    done = render_scenes(names, scene_env(trace_dir, ppo_dir if "ppo_vs_grpo" in names else None, steps),
                         quality, jobs, out_dir, stream=stream)
    bad = [j for j in done if j.state != "done"]
    if bad:
        for j in bad:
            why = _log_tail(j.log) if j.state == "failed" else "not started (an earlier scene failed)"
            where = f" (log: {j.log})" if j.log.exists() else ""
            log(f"minigrpo: scene {j.scene} {j.state if j.state == 'failed' else 'skipped'}: {why}{where}")
        log("minigrpo: lecture not written (the previous lecture.mp4, if any, is untouched); "
            "fix the scene or leave it out with --scenes")
        return 1
    render_s = time.perf_counter() - t0

    figures: list[Path] = []
    if plots:
        from .plot import FIGURES, plot

        plot(trace_dir, out_dir / "plots", log=log)
        figures = [out_dir / "plots" / f"{name}.png" for name in FIGURES]
    steps_text = f", scenes at steps {steps}" if steps else ""  # the figures cover the whole run
    title = f"{meta.algo.upper()} on {meta.task}"
    subtitle = f"model {meta.model} · {display_name(trace_dir)}{steps_text} · {QUALITIES[quality]}"
    build = {"quality": quality, "jobs": jobs, "trace": str(trace_dir), "ppo_trace": str(ppo_dir) if ppo_dir else None,
             "render_seconds": round(render_s, 1), "scene_seconds": {j.scene: round(j.seconds, 1) for j in done}}
    result = assemble([(j.scene, CHAPTERS[j.scene], j.video) for j in done], out_dir, title, subtitle, figures, build)
    result["build"]["total_seconds"] = round(time.perf_counter() - t0, 1)
    write_text(out_dir / "chapters.json", json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    n = len(result["chapters"])
    log(f"minigrpo lecture: {n} chapter{'s' if n > 1 else ''}, {timestamp(result['duration'])} of video"
        f"{' (re-encoded)' if result['reencoded'] else ''}, built in {result['build']['total_seconds']:.0f}s")
    for name in ("lecture.mp4", "chapters.txt", "chapters.json", "slides.html"):
        log(f"  {out_dir / name}")
    return 0
