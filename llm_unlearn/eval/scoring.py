"""Score a causal LM on question/answer pairs: per-sample mean answer NLL and greedy answers.

Both run in batches sorted by length (less padding), then return results in the input order.
- Loss: each pair is encoded as `data.encode_qa` does for training (prompt + answer + one end-of-turn
  token, labels -100 on the prompt); l(a|q) = sum of -log p(y_t | y_<t) over the answer tokens and
  the end token, divided by their count. With `batch_size` > 1, pairs that share a question (an
  answer, its paraphrase, its perturbations) share one pass over the prompt: packed into one row
  with a tree attention mask, the output layer only at the answer labels (`packed.py`); for a model
  that cannot take that mask, the prompts of a batch run once, left-padded, with the KV cache, and
  every answer continues from its prompt's cache (positions from the attention mask, as in
  generation). Either way the prompt tokens, often most of the tokens, are not recomputed per
  answer. With `batch_size` 1 each pair runs alone, unpadded.
- Generation: prompts from `data.encode_prompt`, padded on the left with an attention mask, so
  every row's continuation starts at the same column; greedy decoding with the KV cache, a row
  leaving the batch once it has ended (`greedy.py`); the continuation is cut at the first
  end-of-turn token, decoded without special tokens, stripped. Given the `prompt_states` that the
  packed loss pass over the same questions kept (`answer_losses(..., prompt_states=...)`), a batch
  whose prompts all have them starts from those keys, values and last logits instead of running
  its prompts again (`packed.py`, `greedy.py`).
Batched results equal batch-1 results (to float rounding), which tests check.
With a `Shard` of several processes each scores its share of those batches and all get every
result (`shard.py`); the default is one process scoring all of them.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.qa import IGNORE_INDEX, QACollator, encode_prompt, encode_qa_pairs, end_of_turn_id, pad_id
from .greedy import greedy_continuations, greedy_supported
from .packed import grouped_batches, packed_answer_logits, packed_batches, packed_supported
from .shard import Shard


def _batches(order: list[int], batch_size: int) -> list[list[int]]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def candidate_pairs(rows: Sequence[dict], paraphrase: bool = True) -> tuple[list[str], list[str]]:
    """(questions, texts) to score: per row its answer, its paraphrase (if `paraphrase`), its perturbed answers."""
    questions, texts = [], []
    for r in rows:
        candidates = [r["answer"], *([r["paraphrased_answer"]] if paraphrase else []), *r["perturbed_answer"]]
        questions += [r["question"]] * len(candidates)
        texts += candidates
    return questions, texts


def split_candidates(flat: Sequence[float], rows: Sequence[dict], paraphrase: bool = True):
    """Undo `candidate_pairs` on its losses: (answer [n], paraphrase [n] or None, perturbed: one array per row)."""
    answer, para, perturbed, i = [], [], [], 0
    for r in rows:
        answer.append(flat[i])
        i += 1
        if paraphrase:
            para.append(flat[i])
            i += 1
        perturbed.append(np.asarray(flat[i : i + len(r["perturbed_answer"])]))
        i += len(r["perturbed_answer"])
    return np.array(answer), np.array(para) if paraphrase else None, perturbed


@torch.inference_mode()
def answer_losses(
    model,
    tokenizer,
    questions: Sequence[str],
    answers: Sequence[str],
    *,
    prompt_format: str,
    system_prompt: str | None = None,
    max_length: int = 1024,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "loss",
    shard: Shard | None = None,
    prompt_states: dict | None = None,
    encoded: dict | None = None,
) -> np.ndarray:
    """Mean answer NLL l(a|q) for each (question, answer) pair, shape [n].

    `prompt_states`, a dict, is filled with the prompts' states for `generate_answers` where the
    packed pass runs (module docstring); it stays empty otherwise. `encoded`, a dict the caller keeps
    across calls that score the same pairs again (the stop rule's checks), keeps their encoding, so
    they are tokenized once; keyed by the pairs and the settings, so other pairs never reuse it.
    """
    key = (tuple(questions), tuple(answers), prompt_format, max_length, system_prompt)
    features = (encoded or {}).get(key)
    if features is None:
        features = encode_qa_pairs(tokenizer, questions, answers, prompt_format, max_length, system_prompt)
        if encoded is not None:
            encoded[key] = features
    n_prompt = [f["labels"].count(IGNORE_INDEX) for f in features]
    model.eval()
    if batch_size > 1 and packed_supported(model):
        prompt_ids = [f["input_ids"][:n] for f, n in zip(features, n_prompt)]
        answer_ids = [f["input_ids"][n:] for f, n in zip(features, n_prompt)]
        batches = packed_batches(prompt_ids, answer_ids, batch_size)
        score = _packed_scorer(model, tokenizer, prompt_ids, answer_ids, prompt_states)
    elif batch_size > 1:
        batches = _prompt_group_batches(features, n_prompt, batch_size)
        score = _shared_prompt_scorer(model, tokenizer, features, n_prompt)
    else:
        batches = [[i] for i in range(len(features))]
        score = _single_scorer(model, tokenizer, features)
    out = np.empty(len(features), dtype=np.float64)
    for idx, losses in (shard or Shard()).map_batches(batches, score, progress, desc):
        out[idx] = losses
    return out


def _mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Per-row mean NLL of `labels` (-100 ignored) under `logits` [B, T, V] aligned with them, float64."""
    mask = labels != IGNORE_INDEX
    # Only the answer positions go through the float32 log-softmax.
    nll = F.cross_entropy(logits[mask].float(), labels[mask], reduction="none")
    row = torch.arange(labels.size(0), device=mask.device).unsqueeze(1).expand_as(mask)[mask]
    total = torch.zeros(labels.size(0), dtype=torch.float64, device=mask.device).index_add_(
        0, row, nll.double()
    )
    return (total / mask.sum(1)).cpu().numpy()


def _single_scorer(model, tokenizer, features: list[dict]):
    collate = QACollator(pad_token_id=pad_id(tokenizer), padding_side="right")

    def score(idx: list[int]) -> np.ndarray:
        batch = {k: v.to(model.device) for k, v in collate([features[i] for i in idx]).items()}
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits
        return _mean_nll(logits[:, :-1], batch["labels"][:, 1:])

    return score


def _packed_scorer(model, tokenizer, prompt_ids: list[list[int]], answer_ids: list[list[int]], states=None):
    def score(idx: list[int]) -> np.ndarray:
        logits, at, labels, pair = packed_answer_logits(
            model, [prompt_ids[i] for i in idx], [answer_ids[i] for i in idx], pad_id(tokenizer), states
        )
        # One float32 log-softmax per distinct context, read at each label it predicts.
        nll = -F.log_softmax(logits.float(), dim=-1)[at, labels]
        total = torch.zeros(len(idx), dtype=torch.float64, device=nll.device).index_add_(
            0, pair, nll.double()
        )
        return (total / torch.bincount(pair, minlength=len(idx))).cpu().numpy()

    return score


def _prompt_group_batches(features: list[dict], n_prompt: list[int], batch_size: int) -> list[list[int]]:
    """Batches of at most `batch_size` pairs, the pairs of one prompt adjacent, longest groups first.

    A prompt with more pairs than `batch_size` is cut into several groups.
    """
    return grouped_batches(
        [tuple(f["input_ids"][: n_prompt[i]]) for i, f in enumerate(features)],
        batch_size,
        lambda c: max(len(features[i]["input_ids"]) for i in c),
    )


def _shared_prompt_scorer(model, tokenizer, features: list[dict], n_prompt: list[int]):
    left = QACollator(pad_token_id=pad_id(tokenizer), padding_side="left")
    right = QACollator(pad_token_id=pad_id(tokenizer), padding_side="right")
    keep_one = (
        {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    )

    def score(idx: list[int]) -> np.ndarray:
        keys = [tuple(features[i]["input_ids"][: n_prompt[i]]) for i in idx]
        group = {key: g for g, key in enumerate(dict.fromkeys(keys))}
        prompts = left([{"input_ids": list(key)} for key in group])
        p_ids, p_mask = prompts["input_ids"].to(model.device), prompts["attention_mask"].to(model.device)
        out = model(input_ids=p_ids, attention_mask=p_mask, position_ids=(p_mask.cumsum(1) - 1).clamp_min(0),
                    use_cache=True, **keep_one)  # fmt: skip
        sel = torch.tensor([group[key] for key in keys], device=model.device)
        # The last prompt position (left padding puts it in the last column) predicts each answer's first token.
        logits = out.logits[:, -1][sel].unsqueeze(1)
        answer_ids = [features[i]["input_ids"][n_prompt[i] :] for i in idx]
        answers = right([{"input_ids": ids, "labels": ids} for ids in answer_ids])
        labels = answers["labels"].to(model.device)
        if labels.size(1) > 1:  # the other answer tokens, predicted from the answer's own positions
            cache = out.cache
            cache.reorder_cache(sel)
            a_ids = answers["input_ids"][:, :-1].to(model.device)
            mask = torch.cat([p_mask[sel], answers["attention_mask"][:, :-1].to(model.device)], dim=1)
            positions = p_mask.sum(1)[sel].unsqueeze(1) + torch.arange(a_ids.size(1), device=model.device)
            rest = model(input_ids=a_ids, attention_mask=mask, position_ids=positions, cache=cache,
                         use_cache=True).logits  # fmt: skip
            logits = torch.cat([logits, rest], dim=1)
        return _mean_nll(logits, labels)

    return score


@torch.inference_mode()
def generate_answers(
    model,
    tokenizer,
    questions: Sequence[str],
    *,
    prompt_format: str,
    system_prompt: str | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    progress: bool = False,
    desc: str = "generate",
    shard: Shard | None = None,
    prompt_states: dict | None = None,
) -> list[str]:
    """Greedy answer to each question (continuation cut at the end-of-turn token, stripped).

    `prompt_states`: from `answer_losses` on the same model and questions (module docstring).
    """
    prompts = [{"input_ids": encode_prompt(tokenizer, q, prompt_format, system_prompt)} for q in questions]
    eos = end_of_turn_id(tokenizer)
    collate = QACollator(pad_token_id=pad_id(tokenizer), padding_side="left")
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]["input_ids"]))
    model.eval()
    plain = greedy_supported(model)

    def score(idx: list[int]) -> list[str]:
        if plain:  # finished rows leave the batch (greedy.py)
            ids = [prompts[i]["input_ids"] for i in idx]
            kept = [(prompt_states or {}).get(tuple(p)) for p in ids]
            rows = greedy_continuations(model, ids, pad_token_id=pad_id(tokenizer), eos_token_id=eos,
                                        max_new_tokens=max_new_tokens,
                                        prefilled=kept if all(s is not None for s in kept) else None)  # fmt: skip
            return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in rows]
        batch = collate([prompts[i] for i in idx])
        input_ids = batch["input_ids"].to(model.device)
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=batch["attention_mask"].to(model.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=True,
            pad_token_id=pad_id(tokenizer),
            eos_token_id=eos,
        )
        texts = []
        for row in generated[:, input_ids.size(1) :].tolist():
            if eos in row:
                row = row[: row.index(eos)]
            texts.append(tokenizer.decode(row, skip_special_tokens=True).strip())
        return texts

    out: list[str] = [""] * len(prompts)
    for idx, texts in (shard or Shard()).map_batches(_batches(order, batch_size), score, progress, desc):
        for i, text in zip(idx, texts, strict=True):
            out[i] = text
    return out
