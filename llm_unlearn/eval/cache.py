"""The evaluation cache: an evaluation is computed once per set of inputs, then read back.

An evaluation is a pure function of the model's files, the data files, the code that scores them and
the evaluation settings. The cache key is a SHA-256 over all of them:

- the model: the content of every file loading reads (weights, config, generation config, tokenizer
  files, chat template; for a LoRA adapter also its local base model's), never run outputs such as
  eval.json or the stop rule's kept weights;
- the data: the content of every data file in `data_dir`;
- the code: the content of the modules that score (`eval/`, `data/qa.py`) and the torch and
  transformers versions;
- the settings: split, prompt format, system prompt, max length, batch size (padding changes float
  sums), generation length, truth-ratio variant, membership inference, dtype.

A hit returns the stored result with this call's model path and seeds; anything that changes any of
the above changes the key and recomputes. The key and its inputs' digests are written into
`meta.eval_cache` of every eval.json made with the cache on. Entries live in
`$LLM_UNLEARN_CACHE/evals/<key>.json` (plain JSON, written atomically, so two processes can share it);
an unreadable entry is ignored and recomputed. Inputs that cannot be hashed locally (a Hub model id
not in a local folder, a Hub dataset) are never cached. Under a multi-process launch the cache is
off: ranks could disagree on a hit, and each must run the same batches.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import logging
from pathlib import Path

logger = logging.getLogger("llm_unlearn")

FORMAT = 1
# Files a model load reads; anything else in a model or run folder (eval.json, train_log.jsonl, the stop
# rule's kept weights, checkpoints) does not change what evaluation computes.
MODEL_FILES = (
    "config.json", "generation_config.json", "adapter_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "chat_template.jinja", "chat_template.json",
)  # fmt: skip
MODEL_PREFIXES = ("model", "adapter_model", "pytorch_model", "tokenizer")
_digests: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    """SHA-256 of a file's content, memoized per (path, size, mtime) within the process."""
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _digests:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _digests[memo] = h.hexdigest()
    return _digests[memo]


def _is_model_file(path: Path) -> bool:
    name = path.name
    return path.is_file() and (
        name in MODEL_FILES or name.startswith(MODEL_PREFIXES) or name.endswith(".model")
    )


def model_digest(path: str | Path) -> dict[str, str] | None:
    """{file name: digest} of what loading the model folder reads; None if it is not a local folder."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    files = {p.name: _file_digest(p) for p in sorted(folder.iterdir()) if _is_model_file(p)}
    adapter = folder / "adapter_config.json"
    if adapter.is_file():
        base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
        base_files = model_digest(base) if base else None
        if base_files is None:
            return None  # the adapter's base is not a local folder: its content cannot be pinned
        files |= {f"base/{name}": digest for name, digest in base_files.items()}
    return files or None


def data_digest(data_dir: str | Path | None) -> dict[str, str] | None:
    """{file name: digest} of every data file in `data_dir`; None for a Hub dataset."""
    if data_dir is None or not Path(data_dir).is_dir():
        return None
    return {
        p.name: _file_digest(p)
        for p in sorted(Path(data_dir).iterdir())
        if p.is_file() and not p.name.startswith(".")
    }


def code_digest() -> str:
    """Digest of the scoring code and the libraries it calls: a code change is an input change."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted([*(root / "eval").glob("*.py"), root / "data" / "qa.py"]):
        h.update(path.name.encode() + b"\0" + _file_digest(path).encode())
    for package in ("torch", "transformers"):
        h.update(f"{package}={importlib.metadata.version(package)}".encode())
    return h.hexdigest()


def eval_key(model_path: str, data_dir, dataset_name, settings: dict) -> tuple[str, dict] | None:
    """(key, inputs) for one evaluation, or None when an input cannot be hashed locally."""
    model = model_digest(model_path)
    data = data_digest(data_dir) if dataset_name is None else None
    if model is None or data is None:
        return None
    inputs = {"format": FORMAT, "model": model, "data": data, "code": code_digest(), "settings": settings}
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
    return key, inputs


def cache_dir() -> Path:
    from ..runs.folder import cache_root  # the one place that reads $LLM_UNLEARN_CACHE

    return cache_root() / "evals"


def load(key: str) -> dict | None:
    """The cached result for `key`, or None (absent, unreadable, or stored under another key)."""
    path = cache_dir() / f"{key}.json"
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        logger.warning("ignoring unreadable evaluation cache entry %s (%s); recomputing", path, err)
        return None
    if not isinstance(result, dict) or result.get("meta", {}).get("eval_cache", {}).get("key") != key:
        logger.warning(
            "ignoring evaluation cache entry %s: it was stored under another key; recomputing", path
        )
        return None
    return result


def store(key: str, inputs: dict, result: dict) -> dict:
    """Write `result` (before forget quality, which depends on the reference) under `key`; return it keyed."""
    from ..runs.folder import write_json_atomic

    result = copy.deepcopy(result)
    result["meta"]["eval_cache"] = {"key": key, "inputs": _summary(inputs), "hit": False}
    try:
        write_json_atomic(cache_dir() / f"{key}.json", result)
    except OSError as err:  # a read-only or full cache folder costs a recomputation later, nothing else
        logger.warning("could not write the evaluation cache entry (%s); the result is not cached", err)
    return result


def _summary(inputs: dict) -> dict:
    """The inputs as eval.json records them: each part's digest, and the settings in full."""
    digest = lambda part: hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()  # noqa: E731
    return {"model": digest(inputs["model"]), "data": digest(inputs["data"]), "code": inputs["code"],
            "settings": inputs["settings"]}  # fmt: skip
