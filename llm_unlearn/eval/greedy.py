"""Greedy decoding with the KV cache that drops each row from the batch once it has ended.

    x_{t+1} = argmax_v logits(x_1..x_t)[v]   until the end-of-turn token or `max_new_tokens` tokens

Prompts are left-padded with an attention mask (positions from the mask, as `generate` sets them), so
every row's continuation starts in the same column. `model.generate` keeps a finished row in the batch
to the end, feeding it padding; here the rows that produced the end token leave the batch and the KV
cache (`batch_select_indices`), so the late steps of a batch compute only the rows still writing.
Each remaining row's computation is the one `generate` does for it, so the tokens are the same up to
float rounding that depends on the batch's shape (which the tests compare with batch 1).

A prompt's keys and values, and the logits at its last token, may come already computed (`prefilled`,
e.g. from the packed loss pass over the same prompt, `packed.py`): they are placed left-padded into
the cache (zeros where the mask is 0, which attention never reads) and the prompt forward is skipped.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache, GenerationConfig

# `generate` settings that change greedy decoding (logits processors, stopping rules); a model whose
# generation config sets any of them away from the default is decoded by `generate` itself.
GENERATE_ONLY_FIELDS = (
    "guidance_scale", "sequence_bias", "repetition_penalty", "encoder_repetition_penalty",
    "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids", "min_length", "min_new_tokens",
    "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
    "suppress_tokens", "begin_suppress_tokens", "renormalize_logits", "watermarking_config", "stop_strings",
    "max_time",
)  # fmt: skip


def greedy_supported(model) -> bool:
    """True when `generate(do_sample=False, num_beams=1)` would do plain greedy decoding on `model`."""
    config, default = model.generation_config, GenerationConfig()
    return "logits_to_keep" in inspect.signature(model.forward).parameters and all(
        getattr(config, name, None) == getattr(default, name, None) for name in GENERATE_ONLY_FIELDS
    )


@torch.inference_mode()
def greedy_continuations(
    model,
    prompts: list[list[int]],
    *,
    pad_token_id: int,
    eos_token_id: int,
    max_new_tokens: int,
    prefilled: list[tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]] | None = None,
) -> list[list[int]]:
    """Greedy continuation of each prompt, cut before its first `eos_token_id` (module docstring).

    `prefilled[i]`, if given, is prompt i's per-layer (keys [heads, len, head_dim], values) and the
    logits [vocab] at its last token, as the model computes them for that prompt alone.
    """
    device = model.device
    width = max(len(p) for p in prompts)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    if prefilled is None:
        input_ids = torch.tensor([[pad_token_id] * (width - len(p)) + p for p in prompts], device=device)
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    logits_to_keep=1)  # fmt: skip
        cache, logits = out.cache, out.logits[:, -1]
    else:
        cache, logits = _prefilled_cache(prefilled, width), torch.stack([s[1] for s in prefilled])
    rows = torch.arange(len(prompts), device=device)  # which prompt each batch row continues
    written: list[list[int]] = [[] for _ in prompts]
    for step in range(max_new_tokens):
        token = logits.float().argmax(-1)
        for r, t in zip(rows.tolist(), token.tolist(), strict=True):
            written[r].append(t)
        going = token != eos_token_id
        if step == max_new_tokens - 1 or not going.any():
            break
        if not going.all():
            keep = going.nonzero().squeeze(1)
            rows, token, mask, positions = rows[keep], token[keep], mask[keep], positions[keep]
            cache.batch_select_indices(keep)
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        positions = positions[:, -1:] + 1
        logits = model(input_ids=token.unsqueeze(1), attention_mask=mask, position_ids=positions, cache=cache,
                       use_cache=True).logits[:, -1]  # fmt: skip
    return [w[: w.index(eos_token_id)] if eos_token_id in w else w for w in written]


def _prefilled_cache(prefilled, width: int) -> DynamicCache:
    """A KV cache of the prompts' stored states, each row left-padded to `width` with zeros."""
    layers = []
    for layer in range(len(prefilled[0][0])):
        pair = []
        for kind in (0, 1):  # keys, values
            parts = [s[0][layer][kind] for s in prefilled]
            heads, _, dim = parts[0].shape
            full = parts[0].new_zeros(len(parts), heads, width, dim)
            for row, part in enumerate(parts):
                full[row, :, width - part.size(1) :] = part
            pair.append(full)
        layers.append(tuple(pair))
    return DynamicCache(ddp_cache_data=layers)
