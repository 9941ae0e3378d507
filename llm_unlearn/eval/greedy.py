"""Greedy decoding with the KV cache that drops each row from the batch once it has ended.

    x_{t+1} = argmax_v logits(x_1..x_t)[v]   until the end-of-turn token or `max_new_tokens` tokens

Prompts are left-padded with an attention mask (positions from the mask, as `generate` sets them), so
every row's continuation starts in the same column. `model.generate` keeps a finished row in the batch
to the end, feeding it padding; here the rows that produced the end token leave the batch and the KV
cache (`batch_select_indices`), so the late steps of a batch compute only the rows still writing.
Each remaining row's computation is the one `generate` does for it, so the tokens are the same up to
float rounding that depends on the batch's shape (which the tests compare with batch 1).
"""

from __future__ import annotations

import inspect

import torch
from transformers import GenerationConfig

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
    model, prompts: list[list[int]], *, pad_token_id: int, eos_token_id: int, max_new_tokens: int
) -> list[list[int]]:
    """Greedy continuation of each prompt, cut before its first `eos_token_id` (module docstring)."""
    device = model.device
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_token_id] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    out = model(
        input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
    )
    cache = out.cache
    rows = torch.arange(len(prompts), device=device)  # which prompt each batch row continues
    written: list[list[int]] = [[] for _ in prompts]
    for step in range(max_new_tokens):
        token = out.logits[:, -1].float().argmax(-1)
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
        out = model(input_ids=token.unsqueeze(1), attention_mask=mask, position_ids=positions, cache=cache,
                    use_cache=True)  # fmt: skip
    return [w[: w.index(eos_token_id)] if eos_token_id in w else w for w in written]
