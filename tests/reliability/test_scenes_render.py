"""Scenes given an empty or a one-step trace, and renders that are interrupted.

Every scene is constructed with animations skipped (no video): an empty trace ends in one
``minigrpo: ...`` line (SystemExit), a one-step trace gives a short scene. One real ``-ql``
render of a one-step trace is made, then a second render is killed (``MINIGRPO_FAULT=render``)
just before its video would replace the first: the first video is kept intact (a kill at any
earlier moment stops Manim while it writes under the temp name, which is the same for the final name).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys

import harness as H
import pytest

manim = pytest.importorskip("manim")
from manim import tempconfig  # noqa: E402

from minigrpo.faults import FAULT_EXIT  # noqa: E402
from minigrpo.render import SCENES  # noqa: E402
from trace_factory import make_synthetic_trace  # noqa: E402

ENV_VARS = ("MINIGRPO_TRACE", "MINIGRPO_PPO_TRACE", "MINIGRPO_STEPS", "MINIGRPO_PROBE", "MINIGRPO_FOLLOW")


@pytest.fixture(scope="module")
def small_traces(tmp_path_factory):
    base = tmp_path_factory.mktemp("small_traces")
    out = {}
    for algo in ("grpo", "ppo"):
        out[f"{algo}-1"] = make_synthetic_trace(base / f"{algo}-1", algo, n_steps=1, fsync=False)
        out[f"{algo}-0"] = make_synthetic_trace(base / f"{algo}-0", algo, n_steps=0, fsync=False)
    meta_only = base / "meta-only"
    meta_only.mkdir()
    shutil.copy(base / "grpo-1" / "meta.json", meta_only / "meta.json")
    out["meta-only"] = str(meta_only)
    (base / "empty-dir").mkdir()
    out["empty-dir"] = str(base / "empty-dir")
    return out


def construct(name: str, media, monkeypatch, trace: str, ppo_trace: str):
    import importlib

    for v in ENV_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("MINIGRPO_TRACE", trace)
    monkeypatch.setenv("MINIGRPO_PPO_TRACE", ppo_trace)
    cls = getattr(importlib.import_module(f"scenes.{name}"), SCENES[name])
    with tempconfig({"dry_run": True, "progress_bar": "none", "verbosity": "ERROR", "media_dir": str(media),
                     "disable_caching": True}):
        scene = cls(skip_animations=True)
        scene.render()
    return scene


@pytest.mark.parametrize("kind", ["grpo-0", "meta-only", "empty-dir"])
@pytest.mark.parametrize("name", list(SCENES))
def test_an_empty_trace_is_one_line_for_every_scene(name, kind, small_traces, tmp_path, monkeypatch):
    ppo = small_traces["ppo-0" if kind == "grpo-0" else kind]
    with pytest.raises(SystemExit) as exc:
        construct(name, tmp_path, monkeypatch, small_traces[kind], ppo)
    msg = str(exc.value.code)
    assert msg.startswith("minigrpo: ") and "\n" not in msg, msg
    assert "no optimizer steps" in msg or "not a valid minigrpo trace" in msg, msg


@pytest.mark.parametrize("name", list(SCENES))
def test_a_one_step_trace_gives_a_short_scene(name, small_traces, tmp_path, monkeypatch):
    scene = construct(name, tmp_path, monkeypatch, small_traces["grpo-1"], small_traces["ppo-1"])
    assert getattr(scene.renderer, "num_plays", 1) >= 1


def _render(trace: str, media, fault: str | None = None):
    code = ("import sys; from minigrpo.render import render; "
            f"sys.exit(render('training_overview', {trace!r}, quality='l', media_dir={str(media)!r}))")
    return subprocess.run([sys.executable, "-c", code], cwd=H.ROOT, capture_output=True, text=True, timeout=600,
                          env=H.env(**({"MINIGRPO_FAULT": fault} if fault else {})))


def test_an_interrupted_render_keeps_the_previous_video(small_traces, tmp_path):
    media = tmp_path / "media"
    first = _render(small_traces["grpo-1"], media)
    assert first.returncode == 0, first.stderr[-2000:]
    video = media / "videos" / "training_overview" / "480p15" / "TrainingOverview.mp4"
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                            str(video)], capture_output=True, text=True)
    if probe.returncode == 0:  # ffprobe is there (it comes with Manim's system packages)
        assert float(probe.stdout.strip()) > 1.0
    digest = hashlib.sha256(video.read_bytes()).hexdigest()
    second = _render(small_traces["ppo-1"], media, fault="render:1")  # another trace: another video
    assert second.returncode == FAULT_EXIT
    assert hashlib.sha256(video.read_bytes()).hexdigest() == digest
    partial = video.with_name(".TrainingOverview.partial.mp4")  # the new video, never renamed into place
    assert hashlib.sha256(partial.read_bytes()).hexdigest() != digest
