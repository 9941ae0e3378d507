"""Safe model and tokenizer loading: safetensors only, no remote code unless asked, weights that fit.

Models load as safetensors only unless pickle is explicitly allowed, remote code runs only when
asked, and weights that do not fit their config (or a tokenizer that outgrows the embeddings) are
refused rather than initialised at random. `builtin:NAME` sources resolve through `sources.py`.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from ..runs.folder import RunError


def is_missing_local_path(path: str) -> bool:
    """True for a path meant to be local (`./x`, `/x`, `~/x`, `a/b/c`) that does not exist.

    A Hub id has the form `name` or `org/name`, so it counts as missing here only when `org` is a folder
    here: `runs/modle` is a mistyped folder, not a Hub repo to fetch (with retries, for a minute, offline).
    """
    if Path(path).expanduser().exists():
        return False
    first = path.split("/", 1)[0]
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or ("/" in path and Path(first).is_dir())


def load_tokenizer(path: str, *, trust_remote_code: bool = False):
    """Load a tokenizer from a model folder, Hub id or `builtin:NAME`, checking a local path first."""
    from transformers import AutoTokenizer

    from .sources import resolve

    path = resolve(path)
    local = Path(path)
    if local.exists() and not local.is_dir():
        raise FileNotFoundError(f"model path {path} is a file; pass the folder the model was saved in")
    if is_missing_local_path(path):
        raise FileNotFoundError(
            f"model path {path} does not exist; pass a model folder, a Hub id, or build the default with `llm-unlearn demo`"
        )
    if local.is_dir() and not (local / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} is not a model folder (no config.json); pass the folder a model was saved in"
        )
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as err:
        if local.exists():  # files missing or damaged (a JSON error, a vocabulary that does not parse)
            raise RunError(
                f"the tokenizer in {path} does not load ({' '.join(str(err).split())[:160]}); put the tokenizer "
                "files saved with the model beside it (tokenizer.save_pretrained)"
            ) from None
        # Not a folder here, so it was read as a Hub id, and fetching it failed (no network, no such id).
        raise RunError(
            f"no folder {path!r} here, and fetching it as a Hub id failed ({str(err).splitlines()[0][:160]}); "
            "pass an existing model folder, or check the id and the network (HF_HUB_OFFLINE)"
        ) from None


def load_model(
    path: str, *, trust_remote_code: bool = False, allow_pickle: bool = False, torch_dtype: str = "float32"
):
    """Load a causal LM from a folder, Hub id or `builtin:NAME` (safetensors unless pickle is allowed).

    Every weight the config asks for must be in the files, with the config's shape, and every tensor in
    the files must have a place: transformers would initialise the rest at random and only warn.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from .sources import resolve

    path = resolve(path)
    local = Path(path)
    if local.is_dir() and not allow_pickle and not any(local.glob("*.safetensors")):
        raise RunError(
            f"{path} has no safetensors weights; convert them, or pass --allow_pickle if you trust the files"
        )
    if local.is_dir() and not allow_pickle:
        check_model_folder(local, trust_remote_code=trust_remote_code)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[torch_dtype]
    with _without_load_report():
        model, info = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
            ignore_mismatched_sizes=True,  # reported below, as one line
            output_loading_info=True,
        )
    _check_loading_info(path, info)
    return model


def check_weight_files(folder: str | Path) -> dict[str, tuple[int, ...]]:
    """Every `*.safetensors` in `folder` is whole (its header opens and covers the file): a file cut short
    by a full disk or a killed copy is one line naming it, not a traceback from the loader. Returns each
    tensor's shape (from the headers)."""
    from safetensors import SafetensorError, safe_open

    held = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as f:
                held |= {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        except (SafetensorError, OSError) as err:
            raise RunError(
                f"{path} is damaged ({str(err).splitlines()[0][:100]}): it is cut short or not a safetensors "
                "file; save the model again or restore the file"
            ) from None
    return held


def check_model_folder(folder: str | Path, *, trust_remote_code: bool = False) -> None:
    """A model folder's safetensors files are whole and its config.json fits them; cheap (headers only, the
    model built on the meta device), so commands run it before any long work (push: instead of loading)."""
    held = check_weight_files(folder)
    if held:
        _check_config_size(Path(folder), trust_remote_code, held)


def _check_config_size(folder: Path, trust_remote_code: bool, held: dict[str, tuple[int, ...]]) -> None:
    """A config.json that asks for many times the parameters the safetensors files hold is refused before
    the model is built: a damaged or foreign one (`{"model_type": "llama"}` alone means a 7B model) would
    otherwise allocate and randomly initialise all of them first, and only then report missing weights.
    A tensor the config gives another shape than the file is refused too (an edited hidden size)."""
    import math

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
            wanted = sum(p.numel() for p in model.parameters())
    except (ValueError, OSError, KeyError, TypeError) as err:
        text = " ".join(str(err).split())
        if not trust_remote_code and ("custom code" in text or "trust_remote_code" in text):
            raise RunError(
                f"the model in {folder} needs code shipped with it (its config.json names an auto_map); if you "
                "trust that code, pass --trust_remote_code true"
            ) from None
        missing = re.search(r"does not appear to have a file named (\S+?\.py)", text)
        if missing:  # its auto_map names a module that is not beside it (a copy that left the code behind)
            raise RunError(
                f"the model in {folder} names code in {missing.group(1)}, which is not there; copy the model's "
                "code files beside its config.json"
            ) from None
        cut = text if len(text) <= 160 else text[:160].rsplit(" ", 1)[0] + " ..."
        raise RunError(
            f"{folder / 'config.json'} does not describe a causal language model here ({cut}); put the "
            "config.json saved with these weights beside them"
        ) from None
    # Grossly foreign (names that differ, e.g. by a checkpoint's key conversions, are named key by key by
    # `_check_loading_info` after loading, at the cost of one model of about the weights' size).
    numbers = sum(math.prod(shape) for shape in held.values())
    if wanted > 4 * numbers:
        raise RunError(
            f"the config.json in {folder} describes a model of {wanted:,} parameters but its safetensors files "
            f"hold {numbers:,} numbers; put the config.json saved with these weights beside them (or save the "
            "model again with save_pretrained)"
        )
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    other = [
        (k, held[k], expected[k]) for k in sorted(held.keys() & expected.keys()) if held[k] != expected[k]
    ]
    if other:
        _check_loading_info(
            str(folder), {"mismatched_keys": other, "missing_keys": [], "unexpected_keys": []}
        )


def _names(keys, limit: int = 3) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _check_loading_info(path: str, info: dict) -> None:
    problems = []
    if info["mismatched_keys"]:
        shapes = sorted(info["mismatched_keys"])
        key, in_file, in_config = shapes[0]
        problems.append(
            f"{len(shapes)} tensor(s) of another shape ({key}: {tuple(in_file)} in the weights, "
            f"{tuple(in_config)} by the config"
            f"{f', and {len(shapes) - 1} more' if len(shapes) > 1 else ''})"
        )
    if info["missing_keys"]:
        problems.append(f"{len(info['missing_keys'])} weight(s) missing ({_names(info['missing_keys'])})")
    if info["unexpected_keys"]:
        unexpected = info["unexpected_keys"]
        problems.append(f"{len(unexpected)} tensor(s) the config has no place for ({_names(unexpected)})")
    if problems:
        raise RunError(
            f"the weights in {path} do not fit its config.json: {'; '.join(problems)}; put the config.json "
            "saved with these weights beside them (or save the model again with save_pretrained)"
        )


@contextlib.contextmanager
def _without_load_report():
    """Hide transformers' multi-line load report: `_check_loading_info` says the same in one line."""
    import logging

    def no_report(record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)

    logger = logging.getLogger("transformers.modeling_utils")
    logger.addFilter(no_report)
    try:
        yield
    finally:
        logger.removeFilter(no_report)


def check_tokenizer_fits(tokenizer, model, path: str) -> None:
    """Refuse a tokenizer with ids past the model's input embeddings (they would fail mid-run)."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise RunError(
            f"the tokenizer in {path} has {len(tokenizer)} tokens but the model's input embeddings have {rows} "
            "rows; use the tokenizer the model was trained with, or resize the embeddings "
            "(model.resize_token_embeddings(len(tokenizer))) and save the model again"
        )


def load_model_and_tokenizer(
    path: str, *, trust_remote_code: bool = False, allow_pickle: bool = False, torch_dtype: str = "float32"
):
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    model = load_model(
        path, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, torch_dtype=torch_dtype
    )
    check_tokenizer_fits(tokenizer, model, path)
    return model, tokenizer


def with_lora(model, config):
    """`peft.get_peft_model`, without the FutureWarning it sets off in transformers 5 (peft reads the
    deprecated `is_gradient_checkpointing`: their mismatch, nothing a user of ours can change)."""
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)
