"""Greedy decoding that drops finished rows, from its own prompt forward or kept prompt states (eval/greedy.py), against `model.generate` (pytest tests/test_greedy.py)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaForCausalLM

from llm_unlearn.data.qa import encode_prompt
from llm_unlearn.eval.greedy import greedy_continuations, greedy_supported
from llm_unlearn.eval.scoring import answer_losses, generate_answers
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


@pytest.fixture(scope="module")
def many(setup, micro_world):
    """40 questions, their prompts, the prompt states the loss pass kept over their answers, and an end
    token that some rows write early and others never (so rows leave the batch at different steps)."""
    model, tokenizer, _, _ = setup
    rows = [
        json.loads(x)
        for x in (micro_world / "full.json").read_text(encoding="utf-8").splitlines()
        if x.strip()
    ]
    rows = rows[100:140]
    questions = [r["question"] for r in rows]
    prompts = [encode_prompt(tokenizer, q, "chat_template") for q in questions]
    states: dict = {}
    answer_losses(model, tokenizer, questions, [r["answer"] for r in rows], prompt_format="chat_template",
                  batch_size=8, prompt_states=states)  # fmt: skip
    assert all(tuple(p) in states for p in prompts)
    pad = tokenizer.pad_token_id
    free = hf_greedy(model, prompts, pad, -1)
    eos = max(
        {t for row in free for t in row[:4]}, key=lambda t: sum(t in row for row in free) * (t not in free[0])
    )
    return questions, prompts, states, eos


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


@pytest.mark.parametrize("batch", [1, 3, 32])
def test_greedy_from_the_loss_pass_prompt_states_equals_generate(setup, many, batch):
    model, tokenizer, _, _ = setup
    _, prompts, states, eos = many
    pad = tokenizer.pad_token_id
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # as generate_answers batches them
    ours, theirs = [], []
    for k in range(0, len(order), batch):
        chunk = [prompts[i] for i in order[k : k + batch]]
        ours += greedy_continuations(model, chunk, pad_token_id=pad, eos_token_id=eos, max_new_tokens=MAX_NEW,
                                     prefilled=[states[tuple(p)] for p in chunk])  # fmt: skip
        theirs += hf_greedy(model, chunk, pad, eos)
    assert ours == theirs
    lengths = {len(r) for r in ours}
    assert MAX_NEW in lengths and len(lengths) > 2  # rows ended at different steps, some never


def test_generate_answers_with_some_prompt_states_equal_those_without(setup, many):
    model, tokenizer, _, _ = setup
    questions, prompts, states, _ = many
    # Some prompts keep their states: batches with all of them start from the states, the rest
    # run their prompts; the answers are the same either way.
    some = {tuple(p): states[tuple(p)] for p in prompts[::2]} | {
        tuple(p): states[tuple(p)] for p in prompts[:9]
    }
    for batch in (3, 32):
        settings = dict(prompt_format="chat_template", batch_size=batch, max_new_tokens=MAX_NEW)
        plain = generate_answers(model, tokenizer, questions, **settings)
        assert generate_answers(model, tokenizer, questions, prompt_states=some, **settings) == plain
        assert generate_answers(model, tokenizer, questions, prompt_states=states, **settings) == plain
