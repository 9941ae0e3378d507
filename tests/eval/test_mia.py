"""Membership inference (`llm_unlearn.eval.mia`) against hand computations and a batch-1 recomputation.
`pytest tests/test_mia.py`"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_unlearn.data.qa import encode_qa
from llm_unlearn.eval.mia import auc, mia_metrics, min_k_score, privleak, sample_scores


def _pairwise_auc(members, nonmembers) -> float:
    wins = sum((n > m) + 0.5 * (n == m) for m in members for n in nonmembers)
    return wins / (len(members) * len(nonmembers))


def test_auc_is_the_probability_a_non_member_scores_higher_ties_half():
    members, nonmembers = [0.1, 0.4, 0.35, 0.8], [0.2, 0.9, 0.35]
    # by hand: 0.2 beats 0.1 (1); 0.9 beats all 4; 0.35 beats 0.1, ties 0.35 -> 1.5; total 6.5 / 12
    assert auc(members, nonmembers) == pytest.approx(6.5 / 12)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 40).astype(float), rng.integers(0, 5, 31).astype(float)  # many ties
    assert auc(a, b) == pytest.approx(_pairwise_auc(a, b), abs=1e-12)
    assert auc([0, 0], [1, 1]) == 1.0 and auc([1, 1], [0, 0]) == 0.0 and auc([1], [1]) == 0.5
    with pytest.raises(ValueError, match="at least one member"):
        auc([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        auc([math.nan], [1.0])


def test_privleak_and_min_k_by_hand():
    assert privleak(0.9, 0.5) == pytest.approx((0.1 - 0.5) / 0.5 * 100)  # -80: still memorized
    assert privleak(0.5, 0.5) == pytest.approx(0.0)
    assert privleak(0.3, 0.5) == pytest.approx(40.0)  # over-unlearned: forget set looks unseen-er than unseen
    assert min_k_score([-3.0, -1.0, -2.0, -0.5, -4.0], 0.4) == pytest.approx(3.5)  # floor(2) lowest: -4, -3
    assert min_k_score([-2.0, -1.0], 0.4) == pytest.approx(2.0)  # at least one token


@pytest.fixture(scope="module")
def micro_target(micro_models):
    from llm_unlearn.models.loading import load_model_and_tokenizer

    return load_model_and_tokenizer(str(micro_models["target"]))


def _by_hand(model, tokenizer, question: str, answer: str, k: float = 0.4) -> dict[str, float]:
    """The four scores of one example from HF's logits in float64, one example at a time."""
    feature = encode_qa(tokenizer, question, answer, "chat_template", 1024)
    ids = torch.tensor([feature["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].double()
    labels = feature["labels"][1:]
    pos = [i for i, y in enumerate(labels) if y != -100]
    logp = torch.log_softmax(logits[pos], dim=-1)
    tok = np.array([float(logp[j, labels[p]]) for j, p in enumerate(pos)])
    loss = -tok.mean()
    probs = logp.exp().numpy()
    lp = logp.numpy()
    mu = (probs * lp).sum(1)
    sigma = np.sqrt(np.maximum((probs * lp**2).sum(1) - mu**2, 1e-6))
    z = (tok - mu) / sigma
    text = tokenizer.decode([labels[p] for p in pos][:-1], skip_special_tokens=True)
    n = len(tok) - 1
    lowest = lambda v: -np.sort(v)[: max(1, int(n * k))].mean()  # noqa: E731
    return {"loss": loss, "zlib": loss / len(zlib.compress(text.encode())), "min_k": lowest(tok[:-1]),
            "min_k_plus_plus": lowest(z[:-1])}  # fmt: skip


def test_batched_scores_equal_a_batch_1_float64_recomputation(micro_target, micro_world):
    from llm_unlearn.data.qa import load_split

    model, tokenizer = micro_target
    rows = load_split("forget10", data_dir=micro_world)[:7]
    got = sample_scores(model, tokenizer, [r["question"] for r in rows], [r["answer"] for r in rows],
                        prompt_format="chat_template", batch_size=3)  # fmt: skip
    for i, row in enumerate(rows):
        want = _by_hand(model, tokenizer, row["question"], row["answer"])
        for attack, value in want.items():
            assert got[attack][i] == pytest.approx(value, rel=1e-4, abs=1e-5), (i, attack)


def test_the_target_is_told_from_holdout_and_the_metrics_are_complete(
    micro_target, micro_models, micro_world
):
    from llm_unlearn.data.qa import load_split
    from llm_unlearn.models.loading import load_model_and_tokenizer

    def scores(model, tokenizer, split):
        rows = load_split(split, data_dir=micro_world)
        return sample_scores(model, tokenizer, [r["question"] for r in rows], [r["answer"] for r in rows],
                             prompt_format="chat_template")  # fmt: skip

    target = {s: scores(*micro_target, s) for s in ("forget10", "holdout10")}
    ref_model = load_model_and_tokenizer(str(Path(micro_models["retain"]["forget10"])))
    ref = {s: scores(*ref_model, s) for s in ("forget10", "holdout10")}
    metrics = mia_metrics(target["forget10"], target["holdout10"],
                          {"forget": ref["forget10"], "holdout": ref["holdout10"]})  # fmt: skip
    unseen = mia_metrics(ref["forget10"], ref["holdout10"])  # the retain-only model saw neither set
    # The micro target trains briefly, so it tells its forget set from unseen authors only partly; the
    # retain-only model, to which both are unseen (exchangeable by the world's construction), sits near 0.5.
    assert metrics["mia_auc_loss"]["value"] > unseen["mia_auc_loss"]["value"] + 0.05
    assert abs(unseen["mia_auc_loss"]["value"] - 0.5) < 0.15
    # Calibrated by the reference, the target's memory of its forget set shows plainly.
    assert metrics["mia_auc_reference"]["value"] > 0.9
    assert metrics["privleak"]["value"] < -20  # the forget set looks more familiar than unseen data
    for name, entry in metrics.items():
        assert entry["direction"] in ("closer_to_0.5", "closer_to_0"), name
    assert len(metrics["mia_auc_min_k"]["per_sample_forget"]) == len(target["forget10"]["loss"])


def test_evaluate_adds_membership_metrics_and_privleak_against_the_reference(
    micro_target, micro_models, micro_world, tmp_path
):
    import shutil

    from llm_unlearn.eval.tofu import add_forget_quality, evaluate
    from llm_unlearn.models.loading import load_model_and_tokenizer

    settings = dict(data_dir=micro_world, forget_split="forget10", max_new_tokens=2, progress=False)
    target = evaluate(*micro_target, **settings)
    reference = evaluate(*load_model_and_tokenizer(str(micro_models["retain"]["forget10"])), **settings)
    assert target["meta"]["membership_inference"] == "forget set vs holdout10"
    assert target["meta"]["splits"]["holdout"]["n"] == len(
        target["metrics"]["mia_auc_loss"]["per_sample_holdout"]
    )
    with_ref = add_forget_quality(target, reference)

    # privleak recomputed by hand from the two eval dicts' per-sample Min-K% scores
    def min_k_auc(result):
        entry = result["metrics"]["mia_auc_min_k"]
        return _pairwise_auc(entry["per_sample_forget"], entry["per_sample_holdout"])

    u, r = 1 - min_k_auc(target), 1 - min_k_auc(reference)
    assert with_ref["metrics"]["privleak"]["value"] == pytest.approx((u - r) / (r + 1e-10) * 100, rel=1e-9)
    loss_t, loss_r = target["metrics"]["mia_auc_loss"], reference["metrics"]["mia_auc_loss"]
    diff_f = np.subtract(loss_t["per_sample_forget"], loss_r["per_sample_forget"])
    diff_h = np.subtract(loss_t["per_sample_holdout"], loss_r["per_sample_holdout"])
    assert with_ref["metrics"]["mia_auc_reference"]["value"] == pytest.approx(_pairwise_auc(diff_f, diff_h))

    # No holdout split beside the forget split: skipped, and said so.
    world = tmp_path / "world"
    shutil.copytree(micro_world, world)
    (world / "holdout10.json").unlink()
    result = evaluate(*micro_target, **(settings | {"data_dir": world}))
    assert "mia_auc_loss" not in result["metrics"]
    assert result["meta"]["membership_inference"].startswith("skipped: no holdout10 split")
