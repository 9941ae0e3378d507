"""Packed answer scoring (eval/packed.py) against a plain full-logits computation, pair by pair (pytest tests/test_packed.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from llm_unlearn.data.qa import IGNORE_INDEX, DataError, encode_qa, encode_qa_pairs
from llm_unlearn.eval import packed
from llm_unlearn.eval.mia import sample_scores
from llm_unlearn.eval.scoring import answer_losses, candidate_pairs
from llm_unlearn.models.tiny import tiny_llama_config, train_tokenizer

PROMPT = dict(prompt_format="chat_template", system_prompt=None)


def read_rows(path, n):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:n]


@pytest.fixture(scope="module")
def rows(micro_world):
    return read_rows(micro_world / "forget10_perturbed.json", 6) + read_rows(
        micro_world / "world_facts_perturbed.json", 4
    )


@pytest.fixture(scope="module")
def tokenizer(micro_world):
    texts = [t for r in read_rows(micro_world / "full.json", 400) for t in (r["question"], r["answer"])]
    return train_tokenizer(texts, vocab_size=512)


def make_model(tokenizer, attn: str, cls=LlamaForCausalLM):
    config = tiny_llama_config(tokenizer, "micro", max_position_embeddings=512)
    config.initializer_range = 0.2  # logits far from uniform, so a wrong context shows
    config._attn_implementation = attn
    torch.manual_seed(0)
    return cls(config).eval()


def reference_losses(model, tokenizer, questions, answers) -> np.ndarray:
    """Each pair alone, unpadded: full logits, float64 log-softmax, mean NLL over the answer labels."""
    out = []
    for q, a in zip(questions, answers, strict=True):
        f = encode_qa(tokenizer, q, a, PROMPT["prompt_format"], 1024)
        ids, labels = torch.tensor([f["input_ids"]]), torch.tensor(f["labels"][1:])
        with torch.no_grad():
            logp = F.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
        keep = labels != IGNORE_INDEX
        out.append(float(-logp[keep].gather(1, labels[keep].unsqueeze(1)).mean()))
    return np.array(out)


class ScaledLogits(LlamaForCausalLM):
    """Logits that are not the output layer of the decoder's states (as with logit soft-capping)."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 0.5
        return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("batch_size", [3, 32])
def test_packed_losses_equal_each_pair_scored_alone(tokenizer, rows, attn, batch_size):
    model = make_model(tokenizer, attn)
    assert packed.packed_supported(model)
    questions, answers = candidate_pairs(rows[:6], paraphrase=True)
    q2, a2 = candidate_pairs(rows[6:], paraphrase=False)
    questions, answers = questions + q2, answers + a2
    fast = answer_losses(model, tokenizer, questions, answers, batch_size=batch_size, **PROMPT)
    ref = reference_losses(model, tokenizer, questions, answers)
    # batch 3 cuts a prompt's 7 answers over several rows; batch 32 puts several prompts in one batch
    assert len(set(questions)) == 10 and len(questions) > 32
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-5)
    assert np.ptp(ref) > 0.5  # the answers' losses differ, so a swapped or shifted context would show


def test_packed_logits_equal_full_logits_at_every_answer_label(tokenizer, rows):
    model = make_model(tokenizer, "sdpa")
    q, a = rows[0]["question"], rows[0]["answer"]
    # Answers to one question with a common prefix share tree nodes; another question gets its own row.
    pairs = [(q, a), (q, rows[0]["perturbed_answer"][0]), (q, a + " Indeed so."), (q, a + " Indeed not."),
             (rows[7]["question"], rows[7]["answer"])]  # fmt: skip
    feats = [encode_qa(tokenizer, q, a, PROMPT["prompt_format"], 1024) for q, a in pairs]
    n_prompt = [f["labels"].count(IGNORE_INDEX) for f in feats]
    with torch.inference_mode():
        logits, at, labels, pair = packed.packed_answer_logits(
            model, [f["input_ids"][:n] for f, n in zip(feats, n_prompt)],
            [f["input_ids"][n:] for f, n in zip(feats, n_prompt)], tokenizer.pad_token_id,
        )  # fmt: skip
        for j, (f, n) in enumerate(zip(feats, n_prompt)):
            full = model(input_ids=torch.tensor([f["input_ids"]])).logits[0, n - 1 : -1]
            torch.testing.assert_close(logits[at[pair == j]], full, rtol=0, atol=1e-5)
            assert labels[pair == j].tolist() == f["input_ids"][n:]
    assert (
        len(logits) <= len(labels) - len(feats[0]["input_ids"][n_prompt[0] :]) - 2
    )  # shared contexts computed once


def test_a_model_whose_logits_are_not_the_output_layer_is_scored_unpacked(tokenizer, rows):
    model = make_model(tokenizer, "sdpa", cls=ScaledLogits)
    assert not packed.packed_supported(model)
    questions, answers = candidate_pairs(rows[:3], paraphrase=True)
    fast = answer_losses(model, tokenizer, questions, answers, batch_size=8, **PROMPT)
    np.testing.assert_allclose(
        fast, reference_losses(model, tokenizer, questions, answers), rtol=0, atol=1e-5
    )


def test_packed_membership_scores_equal_batch_one_scores(tokenizer, rows):
    model = make_model(tokenizer, "sdpa")
    questions, answers = [r["question"] for r in rows], [r["answer"] for r in rows]
    one = sample_scores(model, tokenizer, questions, answers, batch_size=1, **PROMPT)
    batched = sample_scores(model, tokenizer, questions, answers, batch_size=4, **PROMPT)
    np.testing.assert_allclose(
        batched["loss"], reference_losses(model, tokenizer, questions, answers), atol=1e-5
    )
    for attack, values in one.items():
        np.testing.assert_allclose(batched[attack], values, rtol=0, atol=1e-5, err_msg=attack)


@pytest.mark.parametrize("prompt_format", ["chat_template", "qa"])
def test_encode_qa_pairs_equals_encode_qa_pair_by_pair(tokenizer, rows, prompt_format):
    questions, answers = candidate_pairs(rows[:3], paraphrase=True)
    many = encode_qa_pairs(tokenizer, questions, answers, prompt_format, 1024)
    assert many == [encode_qa(tokenizer, q, a, prompt_format, 1024) for q, a in zip(questions, answers)]
    with pytest.raises(DataError, match="exceeds max_length"):
        encode_qa_pairs(tokenizer, questions, answers, prompt_format, 8)


def test_packed_batches_order_rows_by_their_tree_width_not_their_answer_lengths():
    prompt_a, prompt_b = [1, 2], [3, 4]
    shared = [5, 6, 7, 8, 9, 10, 11, 12]  # three equal answers: a tree of 7 nodes, 21 answer tokens
    distinct = [[20 + k, 30 + k, 40 + k, 50 + k, 60] for k in range(3)]  # 12 nodes, 15 answer tokens
    prompts, answers = [prompt_a] * 3 + [prompt_b] * 3, [shared] * 3 + distinct
    assert packed.packed_batches(prompts, answers, 3) == [[3, 4, 5], [0, 1, 2]]  # B's row is wider


def test_kept_prompt_states_equal_a_forward_over_the_prompt_alone(tokenizer, rows, monkeypatch):
    model = make_model(tokenizer, "sdpa")
    questions, texts = candidate_pairs(rows, paraphrase=False)
    states: dict = {}
    answer_losses(model, tokenizer, questions, texts, batch_size=8, prompt_states=states, **PROMPT)
    prompts = {tuple(f["input_ids"][: f["labels"].count(IGNORE_INDEX)])
               for f in encode_qa_pairs(tokenizer, questions, texts, "chat_template", 1024)}  # fmt: skip
    assert set(states) - {packed.STATE_BYTES_KEY} == prompts
    for prompt in prompts:
        kv, last = states[prompt]
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([prompt]), use_cache=True)
        torch.testing.assert_close(last, out.logits[0, -1], rtol=1e-5, atol=1e-5)
        for (k, v), layer in zip(kv, out.cache.layers, strict=True):
            torch.testing.assert_close(k, layer.keys[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(v, layer.values[0], rtol=1e-5, atol=1e-5)
    # The budget bounds what is kept; it never changes the losses.
    monkeypatch.setattr(packed, "STATE_BUDGET_BYTES", states[packed.STATE_BYTES_KEY] // 3)
    few: dict = {}
    again = answer_losses(model, tokenizer, questions, texts, batch_size=8, prompt_states=few, **PROMPT)
    assert 0 < len(few) - 1 < len(prompts) and few[packed.STATE_BYTES_KEY] <= packed.STATE_BUDGET_BYTES
    np.testing.assert_array_equal(
        again, answer_losses(model, tokenizer, questions, texts, batch_size=8, **PROMPT)
    )


def test_kept_encodings_give_the_same_losses_and_are_never_reused_for_other_pairs(
    tokenizer, rows, monkeypatch
):
    import llm_unlearn.eval.scoring as scoring

    model = make_model(tokenizer, "sdpa")
    questions, answers = candidate_pairs(rows[:3], paraphrase=True)
    plain = answer_losses(model, tokenizer, questions, answers, batch_size=8, **PROMPT)
    calls = []
    encode = scoring.encode_qa_pairs
    monkeypatch.setattr(scoring, "encode_qa_pairs", lambda *a, **k: calls.append(1) or encode(*a, **k))
    kept: dict = {}
    for _ in range(2):  # two checks of the stop rule: tokenized once, the same losses
        again = answer_losses(model, tokenizer, questions, answers, batch_size=8, encoded=kept, **PROMPT)
        np.testing.assert_array_equal(again, plain)
    assert len(calls) == 1
    other = answer_losses(
        model, tokenizer, questions[:4], answers[:4][::-1], batch_size=8, encoded=kept, **PROMPT
    )
    assert len(calls) == 2 and len(other) == 4  # other pairs: encoded for themselves
    np.testing.assert_allclose(
        other, reference_losses(model, tokenizer, questions[:4], answers[:4][::-1]), rtol=0, atol=1e-5
    )


def test_packed_support_is_asked_once_per_model_and_attention_implementation(tokenizer, monkeypatch):
    model = make_model(tokenizer, "sdpa")
    calls = []
    ask = packed._packed_supported
    monkeypatch.setattr(
        packed, "_packed_supported", lambda m: calls.append(m.config._attn_implementation) or ask(m)
    )
    assert packed.packed_supported(model) and packed.packed_supported(model)
    assert calls == ["sdpa"]
    model.config._attn_implementation = "flex_attention"  # switched at run time: asked again, and refused
    assert not packed.packed_supported(model)
    assert calls == ["sdpa", "flex_attention"]
    assert not packed.packed_supported(
        make_model(tokenizer, "sdpa", cls=ScaledLogits)
    )  # another model, asked anew
