"""Packed answer scoring: the answers to one prompt as a prefix tree in one row, logits only where used.

Scoring a question's answer, paraphrase and perturbed answers needs next-token log-probs at the
answer positions only. A batch is packed as one row per prompt:

    row = prompt p_1..p_m, then the nodes of the prefix tree (trie) of its answers' tokens

Answers that begin alike ("The author was born in Paris" / "... in Rome") share the nodes of their
common prefix; each node is one token, with position id m + its depth, and a 4D attention mask in
which the prompt is causal and a node sees the whole prompt and its own ancestors in the tree only.
Each answer token then has exactly the context and position it has in the sequence prompt + that
answer alone, so its hidden state, and l(a|q), are the same (to float rounding) as scoring the pair
by itself. This is prefix sharing through a tree attention mask, the idea behind the radix-tree
prefix cache of SGLang (RadixAttention, arXiv 2312.07104) and the token-tree verification of
SpecInfer (arXiv 2305.09781), here within one forward and without a cache.

What it saves against padding each pair of the batch to the longest one: the prompt runs once per
row, a shared answer prefix once per tree (37% of the answer tokens in the built-in world's eval
sets), no answer is padded (rows are padded only to the longest row of the batch), and the output
layer (hidden x vocabulary, a third of a token's work in a small model) runs once per distinct
context that predicts a label: the decoder's final hidden states are gathered there and multiplied by
the output embeddings, [U, H] x [H, V], instead of [rows x width, H] x [H, V].

It needs an attention that takes a custom 4D mask (`eager`, `sdpa`) and a model whose logits are
`get_output_embeddings()` of the decoder's last hidden state; `packed_supported` checks both on the
model at hand (a model with logit soft-capping, say, fails it), and the callers keep their unpacked
path for the others.

Given a `states` dict, the pass also keeps each prompt's keys and values (its first columns of the
row: causal over the prompt alone, positions 0..m-1, so what a forward over the prompt alone gives, to
float rounding) and the logits at its last token (computed anyway, as they predict every answer's
first token): greedy generation from the same prompt then skips its prompt forward (`greedy.py`).
This holds for a cache of plain layers only (no sliding window), and stops at `STATE_BUDGET_BYTES`.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
from transformers.cache_utils import DynamicLayer

# Attention implementations that apply a custom 4D mask as is (boolean for SDPA, additive for eager).
MASKED_ATTENTION = ("eager", "sdpa")
# The most bytes of prompt states one `states` dict holds (a 7B model's prompt of 30 tokens is a few
# MB); prompts past it are recomputed by generation, so the budget bounds memory, never results.
STATE_BUDGET_BYTES = 512 * 2**20
STATE_BYTES_KEY = "bytes"  # the entry of a `states` dict that counts its bytes (the others are token tuples)


# model -> {attention implementation: packed_supported's answer}: the answer depends on the architecture,
# not the weights, and costs two forward passes, which repeated scoring (the stop rule's checks) paid each time.
_SUPPORTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def packed_supported(model) -> bool:
    """True when `model` takes the tree mask and its logits are the output embeddings of the decoder's states."""
    impl = model.config._attn_implementation
    known = _SUPPORTED.setdefault(model, {})
    if impl not in known:
        known[impl] = _packed_supported(model)
    return known[impl]


@torch.inference_mode()
def _packed_supported(model) -> bool:
    if model.config._attn_implementation not in MASKED_ATTENTION or model.get_output_embeddings() is None:
        return False
    ids = (torch.arange(1, 9, device=model.device) % model.config.vocab_size).unsqueeze(0)
    full = model(input_ids=ids, use_cache=False).logits
    hidden = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
    ours = model.get_output_embeddings()(hidden)
    return ours.shape == full.shape and torch.allclose(ours.float(), full.float(), rtol=1e-4, atol=1e-4)


def packed_batches(
    prompt_ids: list[list[int]], answer_ids: list[list[int]], batch_size: int
) -> list[list[int]]:
    """Batches of at most `batch_size` pairs (pair i = prompt_ids[i] + answer_ids[i]), one prompt's pairs
    together, widest packed rows (prompt + tree nodes) first so that rows of a batch have similar widths.

    A prompt with more pairs than `batch_size` is cut into several rows.
    """
    # A row's width is its prompt plus the nodes of its prefix tree (not the sum of the answers, which
    # overstates rows with much sharing and so mixes short and long rows in a batch: padding).
    return grouped_batches(
        [tuple(p) for p in prompt_ids],
        batch_size,
        lambda c: (
            len(prompt_ids[c[0]])
            + len({tuple(answer_ids[i][:k]) for i in c for k in range(1, len(answer_ids[i]))})
        ),
    )


def grouped_batches(keys: list[tuple], batch_size: int, width) -> list[list[int]]:
    """Indices grouped by key (a prompt), cut into chunks of at most `batch_size`, widest chunk first
    (`width(chunk)`), then packed first-fit into batches of at most `batch_size`: one prompt's pairs stay
    adjacent and a batch holds chunks of similar width, so little of it is padding."""
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    chunks = [g[k : k + batch_size] for g in groups.values() for k in range(0, len(g), batch_size)]
    chunks.sort(key=lambda c: -width(c))
    batches: list[list[int]] = []
    for chunk in chunks:
        if batches and len(batches[-1]) + len(chunk) <= batch_size:
            batches[-1] += chunk
        else:
            batches.append(list(chunk))
    return batches


def packed_answer_logits(
    model,
    prompt_ids: list[list[int]],
    answer_ids: list[list[int]],
    pad_token_id: int,
    states: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next-token logits at every answer label of the pairs (prompt_ids[i], answer_ids[i]).

    Returns (logits [U, V], at [N], labels [N], pair [N]): N = sum of len(answer_ids[i]); the labels
    are the answers' tokens in pair order, predicted by logits[at[k]]; pair[k] is the index of its
    pair. A context shared by several answers (a common prefix) is one row of `logits`, so U <= N.
    Pairs with the same prompt share one row of the batch, their answers a prefix tree (module docstring).
    With `states`, states[tuple(prompt)] = (per-layer (keys, values) [heads, m, head_dim], last logits [V])
    is added for each prompt of the batch, within `STATE_BUDGET_BYTES` (module docstring).
    """
    row_of: dict[tuple, int] = {}
    ids: list[list[int]] = []
    position: list[list[int]] = []
    parent: list[
        list[int]
    ] = []  # each answer token's parent in the tree (the last prompt token for a first token)
    child: list[dict[tuple[int, int], int]] = []  # (node, token) -> node
    n_prompt: list[int] = []
    predictor: list[tuple[int, int]] = []  # (row, column) whose state predicts each label
    for prompt, answer in zip(prompt_ids, answer_ids, strict=True):
        key = tuple(prompt)
        if key not in row_of:
            row_of[key] = len(ids)
            ids.append(list(prompt))
            position.append(list(range(len(prompt))))
            parent.append([])
            child.append({})
            n_prompt.append(len(prompt))
        r = row_of[key]
        node = n_prompt[r] - 1  # the last prompt token predicts the answer's first token
        predictor.append((r, node))
        for token in answer[:-1]:  # the last label (the end token) is never an input
            nxt = child[r].get((node, token))
            if nxt is None:
                nxt = child[r][(node, token)] = len(ids[r])
                ids[r].append(token)
                position[r].append(position[r][node] + 1)
                parent[r].append(node)
            node = nxt
            predictor.append((r, node))
    width = max(len(x) for x in ids)
    # Query q sees key k if k is q or one of its ancestors: the prompt before it, then its tree path.
    # Padding sees only itself, so no score row is empty, and nothing real sees padding.
    seen = np.zeros((len(ids), width, width), dtype=bool)
    seen[:, np.arange(width), np.arange(width)] = True
    for r, m in enumerate(n_prompt):
        seen[r, :m, :m] = np.tri(m, dtype=bool)
        for q, up in enumerate(parent[r], start=m):
            seen[r, q] |= seen[r, up]
    device = model.device
    input_ids = torch.tensor([x + [pad_token_id] * (width - len(x)) for x in ids], device=device)
    positions = torch.tensor([x + [0] * (width - len(x)) for x in position], device=device)
    seen = torch.from_numpy(seen).to(device)
    if model.config._attn_implementation == "sdpa":
        mask = seen  # torch's SDPA takes a boolean mask (True = attend), faster than adding a float one
    else:  # eager attention adds the mask to the scores
        dtype = model.get_output_embeddings().weight.dtype
        mask = torch.zeros(seen.shape, dtype=dtype, device=device).masked_fill_(~seen, torch.finfo(dtype).min)
    out = model.get_decoder()(input_ids=input_ids, attention_mask=mask.unsqueeze(1), position_ids=positions,
                              use_cache=states is not None)  # fmt: skip
    unique = {p: u for u, p in enumerate(dict.fromkeys(predictor))}
    rows, cols = zip(*unique, strict=True)
    picked = out.last_hidden_state[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
    at = torch.tensor([unique[p] for p in predictor], device=device)
    labels = torch.tensor([t for a in answer_ids for t in a], device=device)
    pair = torch.tensor([j for j, a in enumerate(answer_ids) for _ in a], device=device)
    logits = model.get_output_embeddings()(picked)
    if states is not None:
        _keep_prompt_states(states, out.cache, row_of, n_prompt, logits, unique)
    return logits, at, labels, pair


def _keep_prompt_states(states: dict, cache, row_of: dict, n_prompt: list[int], logits, unique: dict) -> None:
    if any(type(layer) is not DynamicLayer for layer in cache.layers):
        return  # a sliding-window (or otherwise trimmed) cache does not hold every prompt column
    used = states.setdefault(STATE_BYTES_KEY, 0)
    for key, r in row_of.items():
        m = n_prompt[r]
        kv = [(layer.keys[r, :, :m].clone(), layer.values[r, :, :m].clone()) for layer in cache.layers]
        size = (
            sum(t.numel() * t.element_size() for pair in kv for t in pair)
            + logits[0].numel() * logits.element_size()
        )
        if used + size > STATE_BUDGET_BYTES:
            break
        states[key] = (kv, logits[unique[(r, m - 1)]].clone())
        used += size
    states[STATE_BYTES_KEY] = used
