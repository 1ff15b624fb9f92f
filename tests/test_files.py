"""minigrpo.files: a file is replaced whole or not at all, and a torn last line is mended."""

import json
import os
import stat

import pytest

from minigrpo import files


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "meta.json"
    target.write_bytes(b"old")
    n = files.atomic_write(str(target), lambda f: f.write(b"new contents"))
    assert n == len(b"new contents") and target.read_bytes() == b"new contents"
    assert _listing(tmp_path) == ["meta.json"]


@pytest.mark.parametrize("durable", [True, False])
def test_atomic_write_that_fails_keeps_the_old_file_and_no_temp(tmp_path, durable):
    target = tmp_path / "step_000001.npz"
    target.write_bytes(b"old")

    def half_then_fail(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        files.atomic_write(str(target), half_then_fail, durable=durable)
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["step_000001.npz"]


def test_write_via_path_hands_a_hidden_temp_with_the_final_suffix(tmp_path):
    seen = []

    def make(tmp):
        seen.append(tmp)
        assert files.is_temp(tmp.name.removesuffix(".mp4")) and tmp.name.startswith(".")
        tmp.write_bytes(b"video")

    out = files.write_via_path(tmp_path / "sub" / "lecture.mp4", make)
    assert out == tmp_path / "sub" / "lecture.mp4" and out.read_bytes() == b"video"
    assert seen[0].suffix == ".mp4" and seen[0].parent == out.parent and not seen[0].exists()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask  # an ordinary file, not mkstemp's 0600
    assert _listing(out.parent) == ["lecture.mp4"]


def test_write_via_path_gives_each_writer_its_own_temp(tmp_path):
    temps = []
    files.write_via_path(tmp_path / "a.png", lambda t: temps.append(t) or t.write_bytes(b"1"))
    files.write_via_path(tmp_path / "a.png", lambda t: temps.append(t) or t.write_bytes(b"2"))
    assert (tmp_path / "a.png").read_bytes() == b"2"

    def fail_midway(t):
        temps.append(t)
        t.write_bytes(b"3")
        raise ValueError("draw failed")

    with pytest.raises(ValueError, match="draw failed"):
        files.write_via_path(tmp_path / "a.png", fail_midway)
    assert (tmp_path / "a.png").read_bytes() == b"2" and _listing(tmp_path) == ["a.png"]
    assert len(set(temps)) == 3


def test_repair_tail_cuts_a_torn_line_and_completes_a_whole_one(tmp_path):
    torn = tmp_path / "steps.jsonl"
    torn.write_bytes(b'{"step":1}\n{"step":2,"met')
    note = files.repair_tail(str(torn))
    assert note and "14 bytes" in note and torn.read_bytes() == b'{"step":1}\n'

    whole = tmp_path / "rollouts.jsonl"
    whole.write_bytes(b'{"rollout":0}\n{"rollout":1}')
    assert files.repair_tail(str(whole)) is None
    assert whole.read_bytes() == b'{"rollout":0}\n{"rollout":1}\n'

    not_an_object = tmp_path / "x.jsonl"
    not_an_object.write_bytes(b'{"a":1}\n[1, 2]')
    assert files.repair_tail(str(not_an_object)) and not_an_object.read_bytes() == b'{"a":1}\n'

    assert files.repair_tail(str(tmp_path / "missing.jsonl")) is None
    fine = tmp_path / "fine.jsonl"
    fine.write_bytes(b'{"a":1}\n')
    assert files.repair_tail(str(fine)) is None and fine.read_bytes() == b'{"a":1}\n'


def test_complete_lines_skips_a_torn_tail_and_blank_lines(tmp_path):
    f = tmp_path / "steps.jsonl"
    f.write_bytes(b'{"step":1}\n\n{"step":2}\n{"step":3')
    lines = files.complete_lines(str(f))
    assert [json.loads(x)["step"] for x in lines] == [1, 2] and all(x.endswith(b"\n") for x in lines)
    assert files.complete_lines(str(tmp_path / "missing.jsonl")) == []


def test_write_all_finishes_short_writes(tmp_path, monkeypatch):
    real = os.write
    monkeypatch.setattr(files.os, "write", lambda fd, data: real(fd, bytes(data[:3])))
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        files.write_all(fd, b"0123456789")
    finally:
        os.close(fd)
    assert path.read_bytes() == b"0123456789"
