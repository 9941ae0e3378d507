"""Packed answer scoring: every answer to one prompt in one row, logits only where an answer is scored.

Scoring a question's answer, paraphrase and perturbed answers needs next-token log-probs at the
answer positions only. A batch is packed as one row per prompt:

    row = prompt p_1..p_m, then answer 1's tokens a^1_1..a^1_{n1-1}, answer 2's a^2_1.., ...

with position ids 0..m-1 on the prompt and m, m+1, .. restarting on each answer, and a 4D attention
mask in which the prompt is causal and each answer token sees the whole prompt and the earlier tokens
of its own answer only. Each answer token then has exactly the context and position it has in the
sequence prompt + that answer alone, so its hidden state, and l(a|q), are the same (to float rounding)
as scoring the pair by itself. This is prefix sharing through a tree attention mask, the idea behind
the shared-prefix attention of SGLang's RadixAttention (arXiv 2312.07104) and of tree-based
speculative decoding (SpecInfer, arXiv 2305.09781), here without any cache.

What it saves against padding each pair of the batch to the longest one: the prompt runs once per
row, no answer is padded (rows are padded only to the longest row of the batch), and the output layer
(hidden x vocabulary, a third of a token's work in a small model) runs only at the positions whose
log-probs are used: the decoder's final hidden states are gathered there and multiplied by the output
embeddings, [N, H] x [H, V] for N answer labels, instead of [rows x width, H] x [H, V].

It needs an attention that takes a custom 4D mask (`eager`, `sdpa`) and a model whose logits are
`get_output_embeddings()` of the decoder's last hidden state; `packed_supported` checks both on the
model at hand (a model with logit soft-capping, say, fails it), and the callers keep their unpacked
path for the others.
"""

from __future__ import annotations

import torch

# Attention implementations that apply a custom 4D mask as is (boolean for SDPA, additive for eager).
MASKED_ATTENTION = ("eager", "sdpa")


@torch.inference_mode()
def packed_supported(model) -> bool:
    """True when `model` takes the tree mask and its logits are the output embeddings of the decoder's states."""
    if model.config._attn_implementation not in MASKED_ATTENTION or model.get_output_embeddings() is None:
        return False
    ids = (torch.arange(1, 9, device=model.device) % model.config.vocab_size).unsqueeze(0)
    full = model(input_ids=ids, use_cache=False).logits
    hidden = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
    ours = model.get_output_embeddings()(hidden)
    return ours.shape == full.shape and torch.allclose(ours.float(), full.float(), rtol=1e-4, atol=1e-4)


def packed_batches(prompt_ids: list[list[int]], answer_ids: list[list[int]], batch_size: int) -> list[list[int]]:
    """Batches of at most `batch_size` pairs (pair i = prompt_ids[i] + answer_ids[i]), one prompt's pairs
    together, longest packed rows first so that rows of a batch have similar lengths.

    A prompt with more pairs than `batch_size` is cut into several rows.
    """
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(prompt_ids):
        groups.setdefault(tuple(p), []).append(i)
    chunks = [g[k : k + batch_size] for g in groups.values() for k in range(0, len(g), batch_size)]
    width = {id(c): len(prompt_ids[c[0]]) + sum(len(answer_ids[i]) - 1 for i in c) for c in chunks}
    chunks.sort(key=lambda c: -width[id(c)])
    batches: list[list[int]] = []
    for chunk in chunks:
        if batches and len(batches[-1]) + len(chunk) <= batch_size:
            batches[-1] += chunk
        else:
            batches.append(list(chunk))
    return batches


def packed_answer_logits(
    model, prompt_ids: list[list[int]], answer_ids: list[list[int]], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next-token logits at every answer label of the pairs (prompt_ids[i], answer_ids[i]).

    Returns (logits [N, V], labels [N], pair [N]): N = sum of len(answer_ids[i]); the labels are the
    answers' tokens in pair order (logits[k] predicts labels[k]); pair[k] is the index of its pair.
    Pairs with the same prompt share one row (module docstring).
    """
    row_of: dict[tuple, int] = {}
    ids: list[list[int]] = []
    segment: list[list[int]] = []  # 0: the prompt; j + 1: pair j's answer
    position: list[list[int]] = []
    rows, cols, pair = [], [], []
    for j, (prompt, answer) in enumerate(zip(prompt_ids, answer_ids, strict=True)):
        key = tuple(prompt)
        if key not in row_of:
            row_of[key] = len(ids)
            ids.append(list(prompt))
            segment.append([0] * len(prompt))
            position.append(list(range(len(prompt))))
        r, m = row_of[key], len(prompt)
        start = len(ids[r])
        # The last prompt token predicts the answer's first token; its own tokens predict the rest.
        rows += [r] * len(answer)
        cols += [m - 1, *range(start, start + len(answer) - 1)]
        pair += [j] * len(answer)
        ids[r] += answer[:-1]  # the last label (the end token) is never an input
        segment[r] += [j + 1] * (len(answer) - 1)
        position[r] += range(m, m + len(answer) - 1)
    width = max(len(x) for x in ids)
    device = model.device
    input_ids = torch.tensor([x + [pad_token_id] * (width - len(x)) for x in ids], device=device)
    positions = torch.tensor([x + [0] * (width - len(x)) for x in position], device=device)
    seg = torch.tensor([x + [-1] * (width - len(x)) for x in segment], device=device)
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    # Query q sees key k <= q if k is on the prompt or in q's own answer; padding (-1) sees the prompt
    # and itself, so no score row is empty, and nothing real sees padding.
    seen = causal & ((seg.unsqueeze(1) == seg.unsqueeze(2)) | (seg == 0).unsqueeze(1))
    if model.config._attn_implementation == "sdpa":
        mask = seen  # torch's SDPA takes a boolean mask (True = attend), faster than adding a float one
    else:  # eager attention adds the mask to the scores
        dtype = model.get_output_embeddings().weight.dtype
        mask = torch.zeros(seen.shape, dtype=dtype, device=device).masked_fill_(~seen, torch.finfo(dtype).min)
    hidden = model.get_decoder()(
        input_ids=input_ids, attention_mask=mask.unsqueeze(1), position_ids=positions, use_cache=False
    ).last_hidden_state
    picked = hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
    labels = torch.tensor([t for a in answer_ids for t in a], device=device)
    return model.get_output_embeddings()(picked), labels, torch.tensor(pair, device=device)
