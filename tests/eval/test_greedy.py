"""Greedy decoding that drops finished rows (eval/greedy.py) against `model.generate` (pytest tests/test_greedy.py)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaForCausalLM

from llm_unlearn.data.qa import encode_prompt
from llm_unlearn.eval.greedy import greedy_continuations, greedy_supported
from llm_unlearn.eval.scoring import generate_answers
from llm_unlearn.models.tiny import tiny_llama_config, train_tokenizer

MAX_NEW = 12


@pytest.fixture(scope="module")
def setup(micro_world):
    rows = [
        json.loads(x)
        for x in (micro_world / "full.json").read_text(encoding="utf-8").splitlines()
        if x.strip()
    ]
    tokenizer = train_tokenizer([t for r in rows[:400] for t in (r["question"], r["answer"])], vocab_size=512)
    config = tiny_llama_config(tokenizer, "micro", max_position_embeddings=512)
    config.initializer_range = 0.2  # so greedy decoding does not repeat one token
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    questions = [r["question"] for r in rows[:12]]
    prompts = [encode_prompt(tokenizer, q, "chat_template") for q in questions]
    assert len({len(p) for p in prompts}) > 1  # left padding is exercised
    return model, tokenizer, questions, prompts


def hf_greedy(model, prompts, pad, eos):
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False, num_beams=1,
                         pad_token_id=pad, eos_token_id=eos)[:, width:].tolist()  # fmt: skip
    return [row[: row.index(eos)] if eos in row else row for row in out]


def test_greedy_continuations_equal_generate_while_rows_end_at_different_steps(setup):
    model, tokenizer, _, prompts = setup
    assert greedy_supported(model)
    pad = tokenizer.pad_token_id
    # An end token that some rows write early and others never: rows leave the batch at different steps.
    free = hf_greedy(model, prompts, pad, tokenizer.eos_token_id)
    eos = free[0][2]
    ends = [row.index(eos) if eos in row else None for row in hf_greedy(model, prompts, pad, -1)]
    assert None in ends and any(e is not None and e < MAX_NEW - 1 for e in ends)
    ours = greedy_continuations(model, prompts, pad_token_id=pad, eos_token_id=eos, max_new_tokens=MAX_NEW)
    assert ours == hf_greedy(model, prompts, pad, eos)
    assert [len(r) for r in ours] == [MAX_NEW if e is None else e for e in ends]


def test_a_generation_config_with_a_logits_processor_is_decoded_by_generate(setup):
    model, tokenizer, questions, _ = setup
    plain = generate_answers(model, tokenizer, questions, prompt_format="chat_template", batch_size=4,
                             max_new_tokens=MAX_NEW)  # fmt: skip
    before = model.generation_config.no_repeat_ngram_size
    model.generation_config.no_repeat_ngram_size = 1
    try:
        assert not greedy_supported(model)
        blocked = generate_answers(model, tokenizer, questions, prompt_format="chat_template", batch_size=4,
                                   max_new_tokens=MAX_NEW)  # fmt: skip
    finally:
        model.generation_config.no_repeat_ngram_size = before
    assert greedy_supported(model)
    assert blocked != plain  # the processor was applied, so `generate` ran
