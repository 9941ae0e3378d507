"""Score a causal LM on question/answer pairs: per-sample mean answer NLL and greedy answers.

Both run in batches sorted by length (less padding), then return results in the input order.
- Loss: each pair is encoded as `data.encode_qa` does for training (prompt + answer + one end-of-turn
  token, labels -100 on the prompt), padded on the right; l(a|q) = sum of -log p(y_t | y_<t) over
  the answer tokens and the end token, divided by their count.
- Generation: prompts from `data.encode_prompt`, padded on the left with an attention mask, so
  every row's continuation starts at the same column; greedy decoding with the KV cache; the
  continuation is cut at the first end-of-turn token, decoded without special tokens, stripped.
Batched results equal batch-1 results (to float rounding), which tests check.
With a `Shard` of several processes each scores its share of those batches and all get every
result (`shard.py`); the default is one process scoring all of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data import IGNORE_INDEX, QACollator, encode_prompt, encode_qa, end_of_turn_id, pad_id
from .shard import Shard


def _batches(order: list[int], batch_size: int) -> list[list[int]]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


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
) -> np.ndarray:
    """Mean answer NLL l(a|q) for each (question, answer) pair, shape [n]."""
    features = [
        encode_qa(tokenizer, q, a, prompt_format, max_length, system_prompt)
        for q, a in zip(questions, answers, strict=True)
    ]
    collate = QACollator(pad_token_id=pad_id(tokenizer), padding_side="right")
    order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
    model.eval()

    def score(idx: list[int]) -> np.ndarray:
        batch = {k: v.to(model.device) for k, v in collate([features[i] for i in idx]).items()}
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits
        labels = batch["labels"][:, 1:]
        mask = labels != IGNORE_INDEX  # [B, T-1]: answer tokens and the end token
        # Only the answer positions go through the float32 log-softmax (prompts are often half the tokens).
        nll = F.cross_entropy(logits[:, :-1][mask].float(), labels[mask], reduction="none")
        row = torch.arange(len(idx), device=mask.device).unsqueeze(1).expand_as(mask)[mask]
        total = torch.zeros(len(idx), dtype=torch.float64, device=mask.device).index_add_(
            0, row, nll.double()
        )
        return (total / mask.sum(1)).cpu().numpy()

    out = np.empty(len(features), dtype=np.float64)
    for idx, losses in (shard or Shard()).map_batches(_batches(order, batch_size), score, progress, desc):
        out[idx] = losses
    return out


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
) -> list[str]:
    """Greedy answer to each question (continuation cut at the end-of-turn token, stripped)."""
    prompts = [{"input_ids": encode_prompt(tokenizer, q, prompt_format, system_prompt)} for q in questions]
    eos = end_of_turn_id(tokenizer)
    collate = QACollator(pad_token_id=pad_id(tokenizer), padding_side="left")
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]["input_ids"]))
    model.eval()

    def score(idx: list[int]) -> list[str]:
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
