"""`minigrpo lecture`: the join / chapters / stills / slides stage on small synthetic clips
(ffmpeg testsrc, 1 s each), and one real build of a short scene from the shipped trace."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from minigrpo import lecture as L
from minigrpo.render import GRPO_ONLY

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def clip(path: Path, size: str = "160x120", rate: int = 15, seconds: float = 1.0, pattern: str = "testsrc") -> Path:
    subprocess.run(["ffmpeg", "-y", "-v", "error", "-f", "lavfi", "-i", f"{pattern}=size={size}:rate={rate}",
                    "-t", str(seconds), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def ffprobe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_format", "-show_streams", "-show_chapters", "-of", "json",
                          str(path)], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


class Deck(HTMLParser):
    def __init__(self):
        super().__init__()
        self.slides, self.refs, self.scripts_src = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.slides.append(a.get("data-kind"))
        for key in ("src", "poster", "href"):
            if a.get(key):
                self.refs.append(a[key])
        if tag in ("script", "link") and (a.get("src") or a.get("href")):
            self.scripts_src.append(a.get("src") or a.get("href"))


def check_deck(out: Path, n_clips: int, n_figs: int = 0) -> Deck:
    text = (out / "slides.html").read_text()
    deck = Deck()
    deck.feed(text)
    assert deck.slides == ["title"] + ["clip"] * n_clips + ["figure"] * n_figs
    assert not deck.scripts_src, "the deck must not load scripts or styles from anywhere"
    assert not re.search(r"(https?:)?//[a-z0-9]", re.sub(r"<script>.*?</script>", "", text, flags=re.S)), "network URL"
    for ref in deck.refs:  # every clip, poster and figure is a relative file that exists
        assert not ref.startswith("/") and (out / ref).is_file(), ref
    return deck


def check_video(out: Path, chapters: list[dict]) -> dict:
    info = ffprobe(out / "lecture.mp4")
    assert info["format"]["format_name"].startswith("mov,mp4")
    assert [s["codec_type"] for s in info["streams"]].count("video") == 1
    assert len(info["chapters"]) == len(chapters)
    for got, want in zip(info["chapters"], chapters):
        assert got["tags"]["title"] == f"{want['index']}. {want['title']}"
        assert abs(float(got["start_time"]) - want["start"]) < 1e-3
        assert abs(float(got["end_time"]) - want["end"]) < 1e-3
    assert abs(float(info["format"]["duration"]) - chapters[-1]["end"]) < 0.1
    return info


def test_assemble_joins_clips_with_chapters_stills_and_slides(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    videos = [(f"s{i}", f"Part {i}: a = b; #{i}", clip(src / f"{i}.mp4", seconds=1 + 0.5 * i)) for i in range(3)]
    fig = tmp_path / "out" / "plots" / "kl.png"
    fig.parent.mkdir(parents=True)
    fig.write_bytes(PNG_MAGIC + b"0" * 10)
    out = tmp_path / "out"
    result = L.assemble(videos, out, "A title", "sub", figures=[fig])
    assert result["reencoded"] is False
    durations = [c["duration"] for c in result["chapters"]]
    assert durations == pytest.approx([1.0, 1.5, 2.0], abs=0.07)
    assert [c["start"] for c in result["chapters"]] == pytest.approx([0, durations[0], durations[0] + durations[1]], abs=1e-3)
    check_video(out, result["chapters"])
    assert json.loads((out / "chapters.json").read_text()) == result
    lines = (out / "chapters.txt").read_text().splitlines()
    assert lines == ["00:00 1. Part 0: a = b; #0", "00:01 2. Part 1: a = b; #1", "00:02 3. Part 2: a = b; #2"]
    for c in result["chapters"]:
        still = out / c["still"]
        assert still.read_bytes()[:8] == PNG_MAGIC and still.stat().st_size > 1000
        assert ffprobe(out / c["segment"])["streams"][0]["width"] == 160
    check_deck(out, 3, 1)
    assert not [p for p in out.rglob(".*")], "temp files left behind"

    # a second build with fewer clips leaves no stale segment or still behind
    result = L.assemble(videos[:1], out, "A title")
    assert sorted(p.name for p in (out / "segments").iterdir()) == ["01-s0.mp4"]
    assert sorted(p.name for p in (out / "stills").iterdir()) == ["01-s0.png"]
    check_video(out, result["chapters"])
    check_deck(out, 1)


def test_assemble_reencodes_clips_that_differ(tmp_path):
    videos = [("a", "small", clip(tmp_path / "a.mp4", "160x120", 15)),
              ("b", "large, other rate", clip(tmp_path / "b.mp4", "320x240", 25, pattern="smptebars")),
              ("c", "small again", clip(tmp_path / "c.mp4", "160x120", 15))]
    out = tmp_path / "out"
    result = L.assemble(videos, out, "mixed")
    assert result["reencoded"] is True
    info = check_video(out, result["chapters"])
    video = [s for s in info["streams"] if s["codec_type"] == "video"][0]
    assert (video["width"], video["height"], video["r_frame_rate"]) == (160, 120, "15/1")
    assert float(info["format"]["duration"]) == pytest.approx(3.0, abs=0.15)


def test_interrupted_join_keeps_the_previous_lecture(tmp_path, monkeypatch):
    videos = [("a", "one", clip(tmp_path / "a.mp4"))]
    out = tmp_path / "out"
    L.assemble(videos, out, "first")
    before = (out / "lecture.mp4").read_bytes()
    real = L.run_tool

    def dies_in_concat(cmd, what):
        if what == "ffmpeg concat":
            Path(cmd[-1]).write_bytes(b"half a video")  # ffmpeg got this far, then was killed
            raise KeyboardInterrupt
        return real(cmd, what)

    monkeypatch.setattr(L, "run_tool", dies_in_concat)
    with pytest.raises(KeyboardInterrupt):
        L.assemble(videos + [("b", "two", clip(tmp_path / "b.mp4"))], out, "second")
    assert (out / "lecture.mp4").read_bytes() == before
    assert not [p for p in out.rglob(".*")], "temp files left behind"


def test_ffmetadata_escapes_and_chapter_times():
    chapters = [L.Chapter(1, "x", "a=b;c#d\\e", Path("x"), Path("y"), 0.0, 1.25),
                L.Chapter(2, "y", "two", Path("x"), Path("y"), 1.25, 2.5)]
    text = L.ffmetadata(chapters, "t=1")
    assert text.splitlines() == [";FFMETADATA1", "title=t\\=1",
                                 "[CHAPTER]", "TIMEBASE=1/1000", "START=0", "END=1250", "title=1. a\\=b\\;c\\#d\\\\e",
                                 "[CHAPTER]", "TIMEBASE=1/1000", "START=1250", "END=3750", "title=2. two"]
    assert L.timestamp(59.9) == "00:59" and L.timestamp(61) == "01:01" and L.timestamp(3725) == "1:02:05"


def test_choose_scenes():
    said = []
    assert L.choose_scenes(None, "grpo", True, said.append) == list(L.CHAPTERS) and not said
    assert L.choose_scenes("training_overview, PPOLogits", "grpo", True, said.append) == ["ppo_logits", "training_overview"]
    assert L.choose_scenes(None, "grpo", False, said.append) == [n for n in L.CHAPTERS if n != "ppo_vs_grpo"]
    assert "ppo_vs_grpo" in said[-1] and "--ppo-trace" in said[-1]
    assert L.choose_scenes(None, "ppo", True, said.append) == [n for n in L.CHAPTERS if n not in GRPO_ONLY]
    with pytest.raises(L.LectureError, match="unknown scene 'nope'"):
        L.choose_scenes("nope", "grpo", True, said.append)
    with pytest.raises(L.LectureError, match="no scene left"):
        L.choose_scenes("grpo_advantage", "ppo", True, said.append)


def test_progress_redraws_in_place_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    jobs = [L.Job("a", Path("a.log"), Path("a.mp4")), L.Job("b", Path("b.log"), Path("b.mp4"))]
    tty = Tty()
    p = L.Progress(jobs, tty)
    p.update()
    jobs[0].state, jobs[0].animation, jobs[0].started = "running", 4, 0.0
    p.update()
    assert "\x1b[3F" in tty.getvalue() and "animation 5" in tty.getvalue()
    pipe = io.StringIO()
    p = L.Progress(jobs, pipe)
    p.update()
    p.update()
    assert pipe.getvalue().count("\n") == 1 and "\x1b" not in pipe.getvalue()  # one line per change, no escapes


def test_lecture_bad_input_is_one_line(tmp_path, capsys):
    from minigrpo.cli import main

    blocker = tmp_path / "a-file"  # -o under a file cannot be created
    blocker.write_text("x")

    for argv, words in [(["lecture", "--trace", str(tmp_path / "nope")], "no trace at"),
                        (["lecture", "--scenes", "nope"], "unknown scene"),
                        (["lecture", "--ppo-trace", str(tmp_path)], "--ppo-trace"),
                        (["lecture", "--steps", "x:y"], "--steps"),
                        (["lecture", "-o", str(blocker / "sub")], "cannot create the output folder")]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("minigrpo: error:") and words in err[0], err


def test_lecture_negative_jobs_is_one_line(capsys, monkeypatch):
    from minigrpo.cli import main

    monkeypatch.setattr(L, "render_scenes", lambda *a, **k: pytest.fail("rendered with -j -1"))
    assert main(["lecture", "-j", "-1", "--scenes", "training_overview"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minigrpo: error: -j/--jobs -1 is negative") and "0 for" in err[0], err


def test_relative_trace_is_tried_in_the_current_directory_then_the_repo(tmp_path, monkeypatch, capsys):
    from minigrpo.render import find_trace, render

    demo = REPO / "traces" / "demo-grpo-syllogism"
    monkeypatch.chdir(tmp_path)
    assert find_trace("traces/demo-grpo-syllogism") == demo
    assert L._trace_dir("traces/demo-grpo-syllogism", "--trace") == demo
    local = tmp_path / "traces" / "demo-grpo-syllogism"
    shutil.copytree(demo, local)
    assert find_trace("traces/demo-grpo-syllogism") == local.resolve()  # the current directory comes first
    assert L._trace_dir("traces/demo-grpo-syllogism", "--trace") == local.resolve()
    assert find_trace("traces/nope") is None
    assert render("ppo_logits", "traces/nope") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no trace at traces/nope" in err[0] and "current directory" in err[0], err


@pytest.mark.timeout(300)
def test_lecture_real_build_of_one_scene_from_the_shipped_trace(tmp_path, capsys):
    """The whole command on the shipped trace: one short scene at -ql, then a failing scene
    (a step range the trace does not have) that must leave the finished lecture alone."""
    from minigrpo.cli import main

    out = tmp_path / "lecture"
    assert main(["lecture", "-q", "l", "--scenes", "training_overview", "-o", str(out)]) == 0
    result = json.loads((out / "chapters.json").read_text())
    assert [c["scene"] for c in result["chapters"]] == ["training_overview"]
    info = check_video(out, result["chapters"])
    video = [s for s in info["streams"] if s["codec_type"] == "video"][0]
    assert (video["width"], video["height"]) == (854, 480)
    assert result["duration"] > 5
    check_deck(out, 1, 8)
    assert (out / "stills" / "01-training_overview.png").read_bytes()[:8] == PNG_MAGIC
    said = capsys.readouterr()
    assert "training_overview  done" in said.err and "1 chapters" not in said.out and "1 chapter," in said.out

    before = (out / "lecture.mp4").read_bytes()
    assert main(["lecture", "--scenes", "kl_penalty", "--steps", "900:999", "--no-plots", "-o", str(out)]) == 1
    said = capsys.readouterr().out
    assert "scene kl_penalty failed" in said and "selects no step" in said and "lecture not written" in said
    assert (out / "lecture.mp4").read_bytes() == before


DOM_STUB = r"""
const listeners = {};
class Video { constructor(){ this.paused = true; this.currentTime = 5; this.plays = 0; }
  play(){ this.paused = false; this.plays++; return Promise.resolve(); } pause(){ this.paused = true; } }
class Section { constructor(kind){ this.kind = kind; this.cls = new Set(); this.video = kind === 'clip' ? new Video() : null;
  this.classList = { toggle: (c, on) => on ? this.cls.add(c) : this.cls.delete(c) }; }
  querySelector(){ return this.video; } }
const slides = KINDS.map(k => new Section(k));
const pos = { textContent: '' }, prev = {}, next = {};
global.location = { hash: HASH }; global.history = { replaceState: (a, b, h) => { global.location.hash = h; } };
global.document = { querySelectorAll: () => slides, getElementById: id => ({ pos, prev, next })[id],
  addEventListener: (type, fn) => { listeners[type] = fn; }, documentElement: {} };
const key = k => listeners.keydown({ key: k, preventDefault(){} });
const active = () => slides.findIndex(s => s.cls.has('active'));
const log = [];
const snap = () => log.push([active(), pos.textContent, slides.map(s => s.video ? (s.video.paused ? 'p' : 'P') : '-').join('')]);
eval(SCRIPT);
snap(); key('ArrowRight'); snap(); key('PageDown'); snap(); key(' '); snap(); key('ArrowLeft'); snap();
key('End'); snap(); key('ArrowRight'); snap(); key('Home'); snap(); key('PageUp'); snap();
listeners.click({ target: { closest: () => null } }); snap();
listeners.click({ target: { closest: () => ({}) } }); snap();
next.onclick(); snap(); prev.onclick(); snap();
key('End'); key('ArrowLeft'); key('ArrowLeft'); const v = slides[active()].video; key('k'); snap(); key('k'); snap();
console.log(JSON.stringify({ log, hash: global.location.hash, replayed: v ? v.currentTime : null }));
"""


@pytest.mark.skipif(not shutil.which("node"), reason="node is not installed (the deck's keys are checked with node)")
def test_slide_keys_step_through_and_play_the_clips(tmp_path):
    """Run the deck's own script against a minimal DOM: keys and clicks move one slide, the shown clip plays from 0."""
    result = {"title": "T", "subtitle": "s", "chapters": [
        {"index": i, "scene": f"s{i}", "title": f"t{i}", "start": float(i), "end": i + 1.0, "duration": 1.0,
         "segment": f"segments/{i}.mp4", "still": f"stills/{i}.png"} for i in (1, 2)], "figures": ["plots/kl.png"]}
    text = L.slides_html(result)
    script = re.search(r"<script>(.*?)</script>", text, re.S).group(1)
    kinds = re.findall(r'<section class="slide" data-kind="(\w+)"', text)
    assert kinds == ["title", "clip", "clip", "figure"]
    js = DOM_STUB.replace("KINDS", json.dumps(kinds)).replace("HASH", json.dumps("")).replace("SCRIPT", json.dumps(script))
    (tmp_path / "deck.js").write_text(js)
    out = json.loads(subprocess.run(["node", str(tmp_path / "deck.js")], check=True, capture_output=True,
                                    text=True).stdout)
    assert out["log"] == [
        [0, "1 / 4", "-pp-"], [1, "2 / 4", "-Pp-"], [2, "3 / 4", "-pP-"], [3, "4 / 4", "-pp-"], [2, "3 / 4", "-pP-"],
        [3, "4 / 4", "-pp-"], [3, "4 / 4", "-pp-"], [0, "1 / 4", "-pp-"], [0, "1 / 4", "-pp-"],
        [1, "2 / 4", "-Pp-"],  # a click on the page goes on
        [1, "2 / 4", "-Pp-"],  # a click on the video (its controls) does not
        [2, "3 / 4", "-pP-"], [1, "2 / 4", "-Pp-"],
        [1, "2 / 4", "-pp-"], [1, "2 / 4", "-Pp-"]]  # k pauses and plays the clip
    assert out["hash"] == "#2" and out["replayed"] == 0


def test_a_trace_without_probes_leaves_out_the_scenes_that_replay_them(tmp_path):
    """--probe-completions 0: ppo_logits, kl_penalty and ppo_vs_grpo have nothing to replay (each
    stopped the whole lecture, and `render --all`, with its "no probes" error); the other scenes
    still make a lecture, and each skip is said."""
    from trace_factory import build_synthetic, make_synthetic_trace, write_synthetic

    from minigrpo.render import NEEDS_PROBES, with_probes

    meta, rollouts, steps = build_synthetic("grpo", n_steps=2)
    for step in steps:
        step.probes = []
    bare = tmp_path / "bare"
    write_synthetic(bare, meta, rollouts, steps)
    probed = make_synthetic_trace(tmp_path / "probed", "grpo", n_steps=2, fsync=False)
    said = []
    names = L.choose_scenes(None, "grpo", True, said.append, Path(bare))
    assert names == [n for n in L.CHAPTERS if n not in NEEDS_PROBES]
    assert len(said) == len(NEEDS_PROBES) and all("--probe-completions 0" in line for line in said)
    assert L.choose_scenes(None, "grpo", True, said.append, Path(probed)) == list(L.CHAPTERS)
    assert with_probes(["ppo_logits", "grpo_advantage"], Path(bare), said.append) == ["grpo_advantage"]
    empty = tmp_path / "empty"  # no update recorded yet: not "trained with --probe-completions 0"
    write_synthetic(empty, meta, [], [])
    said.clear()
    assert with_probes(["ppo_logits", "grpo_advantage"], Path(empty), said.append) == ["ppo_logits", "grpo_advantage"]
    assert said == []
