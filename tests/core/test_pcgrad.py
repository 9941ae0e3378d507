"""PCGrad (arXiv 2001.06782) as `--combine pcgrad` applies it: pairs harm neither term, triples follow the paper.

A term "gets worse" along the step when its directional derivative along -d is positive, i.e. when
<d, g_k> < 0 for its weighted gradient g_k (every term is minimized, theta <- theta - eta d).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_unlearn.core.optim import PCGradCombiner, pcgrad_orders
from tests.core.test_ngdiff import _grads, _window
from tests.core.test_trainer import _trainer, _update, tiny  # noqa: F401  (module fixture: micro model and data)


def _combine(vectors: list[torch.Tensor], weights: list[float], step: int = 0, seed: int = 0):
    """d from `PCGradCombiner` for linear terms whose gradients are `vectors`, split over two parameters."""
    dim = vectors[0].numel()
    params = [torch.nn.Parameter(torch.zeros(dim // 2, dtype=torch.float64)),
              torch.nn.Parameter(torch.zeros(dim - dim // 2, dtype=torch.float64))]  # fmt: skip
    combiner = PCGradCombiner(params, seed=seed)
    flat = lambda: torch.cat(params)  # noqa: E731
    combiner.accumulate({f"t{k}": (v * flat()).sum() for k, v in enumerate(vectors)})
    stats = combiner.combine({f"t{k}": w for k, w in enumerate(weights)}, step=step)
    return torch.cat([p.grad for p in params]), stats


def _paper_pcgrad(gs: list[torch.Tensor], orders: list[list[int]]) -> torch.Tensor:
    """Yu et al.'s Algorithm 1 on explicit vectors: each g_i projected off the original g_j in the given order."""
    total = torch.zeros_like(gs[0])
    for i, g in enumerate(gs):
        g = g.clone()
        for j in orders[i]:
            inner = torch.dot(g, gs[j])
            if inner < 0:
                g = g - inner / torch.dot(gs[j], gs[j]) * gs[j]
        total += g
    return total


def _random_terms(rng: np.random.Generator, n: int, dim: int) -> tuple[list[torch.Tensor], list[float]]:
    """n random gradients with at least one conflicting pair, and random positive weights."""
    while True:
        vs = [torch.tensor(rng.standard_normal(dim) * rng.uniform(0.1, 10.0)) for _ in range(n)]
        if any(torch.dot(vs[a], vs[b]) < 0 for a in range(n) for b in range(a + 1, n)):
            return vs, rng.uniform(0.2, 3.0, size=n).tolist()


@pytest.mark.parametrize("dim", [2, 3, 16])
def test_on_conflicting_pairs_neither_term_gets_worse_and_each_keeps_its_orthogonal_part(dim):
    rng = np.random.default_rng(dim)
    for _ in range(200):
        vs, ws = _random_terms(rng, 2, dim)
        g1, g2 = ws[0] * vs[0], ws[1] * vs[1]
        d, stats = _combine(vs, ws)
        assert stats["pcgrad_projected"] == 2
        cos2 = torch.dot(g1, g2) ** 2 / (torch.dot(g1, g1) * torch.dot(g2, g2))
        # <d, g_k> = ||g_k||^2 (1 - cos^2): never negative. (The combiner's dot products are fp32 sums.)
        for g in (g1, g2):
            gg = float(torch.dot(g, g))
            assert float(torch.dot(d, g)) == pytest.approx(gg * float(1 - cos2), abs=1e-5 * gg)
            assert torch.dot(d, g) >= -1e-5 * gg


def test_by_hand_both_terms_of_a_conflicting_pair_are_projected_and_a_non_conflicting_pair_is_summed():
    # g_1 = (-1, 1), g_2 = (1, 0): g_1' = (0, 1), g_2' = (1, 0) + (1/2)(-1, 1) = (0.5, 0.5).
    d, stats = _combine([torch.tensor([-1.0, 1.0], dtype=torch.float64), torch.tensor([1.0, 0.0], dtype=torch.float64)],
                        [1.0, 1.0])  # fmt: skip
    assert d.tolist() == pytest.approx([0.5, 1.5])
    assert stats["pcgrad_projected"] == 2
    d, stats = _combine([torch.tensor([1.0, 1.0], dtype=torch.float64), torch.tensor([1.0, 0.0], dtype=torch.float64)],
                        [1.0, 1.0])  # fmt: skip
    assert d.tolist() == pytest.approx([2.0, 1.0])
    assert stats["pcgrad_projected"] == 0


@pytest.mark.parametrize(("n", "dim"), [(3, 2), (3, 3), (3, 16), (4, 16)])
def test_three_or_more_terms_follow_the_papers_algorithm_in_the_seeded_order(n, dim):
    rng = np.random.default_rng(100 * n + dim)
    for step in range(100):
        vs, ws = _random_terms(rng, n, dim)
        d, _ = _combine(vs, ws, step=step, seed=7)
        gs = [w * v for v, w in zip(vs, ws)]
        expected = _paper_pcgrad(gs, pcgrad_orders(n, 7, step))
        # d can be short beside the terms (they cancel); the combiner's dot products are fp32 sums.
        assert (d - expected).norm() <= 1e-5 * max(g.norm() for g in gs)


def test_with_three_terms_some_term_can_still_get_worse_as_the_docstring_says():
    """The no-harm property is the two-term case only: this checks the docstring's caveat is true."""
    rng = np.random.default_rng(0)
    harmed = 0
    for step in range(200):
        vs, ws = _random_terms(rng, 3, 2)
        d, _ = _combine(vs, ws, step=step)
        harmed += any(torch.dot(d, w * v) < -1e-9 * (w * v).norm() * d.norm() for v, w in zip(vs, ws))
    assert harmed > 0


def test_orders_are_permutations_of_the_other_terms_fixed_by_seed_and_step_and_vary_across_steps():
    orders = pcgrad_orders(4, seed=3, step=5)
    assert orders == pcgrad_orders(4, seed=3, step=5)
    assert all(sorted(order) == [j for j in range(4) if j != i] for i, order in enumerate(orders))
    assert len({str(pcgrad_orders(4, seed=3, step=s)) for s in range(20)}) > 1
    assert len({str(pcgrad_orders(4, seed=s, step=5)) for s in range(20)}) > 1


def test_zero_and_zero_weight_terms_project_nothing():
    g = torch.tensor([-1.0, 3.0], dtype=torch.float64)
    d, stats = _combine([g, torch.zeros(2, dtype=torch.float64)], [1.0, 1.0])
    assert d.tolist() == pytest.approx(g.tolist()) and stats["dropped_terms"] == 1
    d, stats = _combine([g, torch.tensor([1.0, 0.0], dtype=torch.float64)], [1.0, 0.0])
    assert d.tolist() == pytest.approx(g.tolist()) and stats["pcgrad_projected"] == 0


def test_a_real_graddiff_step_moves_neither_the_forget_nor_the_retain_objective_up(tiny, tmp_path):  # noqa: F811
    """On the micro model the two graddiff gradients conflict strongly (cos(G_F, G_R) near -1): the
    one-way rule (forget projected off retain only) raised the forget objective here."""
    lr = 0.01
    trainer = _trainer(tiny, tmp_path, method="graddiff", combine="pcgrad", learning_rate=lr)
    trainer.model.double()
    forget, retain = _window(trainer)
    # Gradients of the terms as minimized: the forget term is -NLL.
    forget_grad, retain_grad = -_grads(trainer.model, forget), _grads(trainer.model, retain)
    cos = torch.dot(forget_grad, retain_grad) / (forget_grad.norm() * retain_grad.norm())
    assert cos < -0.5
    update = _update(trainer)
    # The paper's two-term direction, and each objective's first-order change along the update.
    expected = _paper_pcgrad([forget_grad, retain_grad], [[1], [0]])
    assert (update + lr * expected).norm() / (lr * expected.norm()) < 1e-6
    assert torch.dot(forget_grad, update) <= 0
    assert torch.dot(retain_grad, update) <= 0
    # The one-way rule on the same gradients would have raised the forget objective.
    one_way = (
        retain_grad
        + forget_grad
        - torch.dot(forget_grad, retain_grad) / retain_grad.norm() ** 2 * retain_grad
    )
    assert torch.dot(forget_grad, -lr * one_way) > 0
