"""Greedy decoding that drops finished rows, from its own prompt forward or kept prompt states (eval/greedy.py), against `model.generate` (pytest tests/test_greedy.py)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import LlamaForCausalLM

from llm_unlearn.data.qa import encode_prompt
from llm_unlearn.eval.greedy import greedy_continuations, greedy_supported, verified_continuations
from llm_unlearn.eval.scoring import REUSED_KEY, answer_losses, generate_answers
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


def test_per_prompt_budgets_equal_decoding_each_prompt_with_its_own(setup, many):
    model, tokenizer, _, _ = setup
    _, prompts, _, eos = many
    pad = tokenizer.pad_token_id
    chunk = prompts[:6]
    budgets = [1, 3, MAX_NEW, 5, 2, MAX_NEW - 1]
    together = greedy_continuations(model, chunk, pad_token_id=pad, eos_token_id=eos, max_new_tokens=budgets)
    alone = [
        greedy_continuations(model, [p], pad_token_id=pad, eos_token_id=eos, max_new_tokens=b)[0]
        for p, b in zip(chunk, budgets, strict=True)
    ]
    assert together == alone
    assert all(len(row) <= b for row, b in zip(together, budgets, strict=True))
    with pytest.raises(ValueError, match="at least 1"):
        greedy_continuations(model, chunk[:2], pad_token_id=pad, eos_token_id=eos, max_new_tokens=[3, 0])


def test_verified_continuations_reuse_right_guesses_and_repair_wrong_ones(setup, many):
    model, tokenizer, _, _ = setup
    _, prompts, _, eos = many
    pad = tokenizer.pad_token_id
    truth = greedy_continuations(model, prompts, pad_token_id=pad, eos_token_id=eos, max_new_tokens=MAX_NEW)
    assert {len(r) for r in truth} >= {MAX_NEW} and min(len(r) for r in truth) < MAX_NEW  # some ended early
    same, reused = verified_continuations(
        model, prompts, truth, pad_token_id=pad, eos_token_id=eos, max_new_tokens=MAX_NEW
    )
    assert same == truth and reused == len(prompts)
    # Wrong guesses of every kind: a token changed early or last, cut short (so it claims an early
    # end), one token too long past an end, empty, an end token the model never writes there.
    other = (eos + 1) % tokenizer.vocab_size
    wrong = []
    for i, row in enumerate(truth):
        kind = i % 6
        if kind == 0 and row:
            wrong.append([t if j else (t + 1) % tokenizer.vocab_size for j, t in enumerate(row)])
        elif kind == 1 and row:
            wrong.append(row[:-1] + [(row[-1] + 1) % tokenizer.vocab_size])
        elif kind == 2 and len(row) > 1:
            wrong.append(row[: len(row) // 2])
        elif kind == 3 and len(row) < MAX_NEW:
            wrong.append(row + [other])
        elif kind == 4:
            wrong.append([])
        else:
            wrong.append(None)  # this row keeps the right guess
    guesses = [w if w is not None else t for w, t in zip(wrong, truth, strict=True)]
    changed = sum(g != t for g, t in zip(guesses, truth, strict=True))
    assert changed >= len(prompts) // 2
    repaired, reused = verified_continuations(
        model, prompts, guesses, pad_token_id=pad, eos_token_id=eos, max_new_tokens=MAX_NEW
    )
    assert repaired == truth
    assert reused == len(prompts) - changed
    with pytest.raises(ValueError, match="longer than max_new_tokens"):
        verified_continuations(model, prompts[:1], [[1] * (MAX_NEW + 1)], pad_token_id=pad, eos_token_id=eos,
                               max_new_tokens=MAX_NEW)  # fmt: skip


def test_generate_answers_reuses_the_last_calls_tokens_only_where_the_model_still_writes_them(setup, many):
    model, tokenizer, _, _ = setup
    questions, _, _, _ = many
    settings = dict(prompt_format="chat_template", batch_size=8, max_new_tokens=MAX_NEW)
    kept: dict = {}
    first = generate_answers(model, tokenizer, questions, continuations=kept, **settings)
    assert kept[REUSED_KEY] == 0 and first == generate_answers(model, tokenizer, questions, **settings)
    again = generate_answers(model, tokenizer, questions, continuations=kept, **settings)
    assert again == first and kept[REUSED_KEY] == len(questions)
    # A small step on the weights (as between two checks of the stop rule): the answers are those of
    # plain decoding on the new weights, some reused and some not.
    moved = copy.deepcopy(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.02 * torch.randn_like(p))
    plain = generate_answers(moved, tokenizer, questions, **settings)
    assert plain != first
    assert generate_answers(moved, tokenizer, questions, continuations=kept, **settings) == plain
    assert 0 < kept[REUSED_KEY] < len(questions)
