"""GeN learning-rate fit, update rule, scheduler and probes (llm_unlearn/core/gen.py): `pytest tests/test_gen.py`."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from llm_unlearn.core.gen import GenFit, GenScheduler, fit_step, probe_losses, update_lr


def _quadratic(sign: float = 1.0):
    """L(theta) = sign/2 * theta^T H theta with H = Q diag(1, 10, 100) Q^T, in float64."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    h = sign * q @ torch.diag(torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64)) @ q.T
    theta0 = torch.randn(3, generator=gen, dtype=torch.float64)
    noise = torch.randn(3, generator=gen, dtype=torch.float64)

    def loss(theta: torch.Tensor) -> float:
        return float(0.5 * theta @ h @ theta)

    return h, theta0, noise, loss


def _three_losses(loss, theta0: torch.Tensor, delta: torch.Tensor, eta: float) -> tuple[float, float, float]:
    return loss(theta0), loss(theta0 - eta * delta), loss(theta0 + eta * delta)


@pytest.mark.parametrize("eta", [1e-3, 1e-2, 0.1, 1.0, 3.0])
def test_fit_on_a_quadratic_returns_the_exact_newton_step_for_any_probe_lr(eta):
    h, theta0, noise, loss = _quadratic()
    g = h @ theta0
    delta = g + 0.3 * g.norm() * noise  # not an eigenvector, not the gradient, still a descent direction
    expected = float(g @ delta / (delta @ h @ delta))
    fit = fit_step(eta, *_three_losses(loss, theta0, delta, eta))
    assert fit.accepted and fit.reason == "accepted"
    assert fit.eta_star == pytest.approx(expected, rel=1e-6)
    assert fit.curvature == pytest.approx(float(delta @ h @ delta), rel=1e-6)
    assert fit.slope == pytest.approx(float(g @ delta), rel=1e-6)


def test_fit_from_literal_losses_matches_the_three_point_formula():
    fit = fit_step(0.1, l0=1.0, l_minus=0.9, l_plus=1.2)
    assert fit.curvature == pytest.approx(10.0)
    assert fit.slope == pytest.approx(1.5)
    assert fit.eta_star == pytest.approx(0.15)


def test_negative_curvature_is_rejected_and_the_lr_is_kept():
    h, theta0, _, loss = _quadratic(sign=-1.0)
    delta = h @ theta0  # the gradient: a descent direction on a concave bowl
    fit = fit_step(0.01, *_three_losses(loss, theta0, delta, 0.01))
    assert (fit.accepted, fit.reason) == (False, "negative_curvature")
    assert fit.curvature < 0
    assert update_lr(0.01, fit) == 0.01


def test_an_ascent_direction_is_rejected_and_the_lr_is_kept():
    h, theta0, _, loss = _quadratic()
    delta = -(h @ theta0)
    fit = fit_step(0.01, *_three_losses(loss, theta0, delta, 0.01))
    assert (fit.accepted, fit.reason) == (False, "ascent")
    assert fit.curvature > 0 and fit.slope < 0
    assert update_lr(0.01, fit) == 0.01


@pytest.mark.parametrize("losses", [(1.0, 0.9, math.inf), (1.0, math.nan, 1.1), (1.0, 1.0, 1.0)])
def test_a_failed_fit_from_a_non_finite_or_flat_loss_halves_the_lr(losses):
    fit = fit_step(0.01, *losses)
    assert (fit.accepted, fit.reason) == (False, "fit_failed")
    assert update_lr(0.01, fit) == 0.005


@pytest.mark.parametrize(
    "eta_star, gamma, scale, expected",
    [
        (10.0, 0.9, 1.0, 0.9 + 0.1 * 2.0),  # far above 2*eta: clipped to 2*eta
        (0.1, 0.9, 1.0, 0.9 + 0.1 * 0.5),  # far below eta/2: clipped to eta/2
        (1.5, 0.9, 1.0, 0.9 + 0.1 * 1.5),  # in between: passes through
        (1.5, 0.9, 0.5, 0.9 + 0.1 * 0.5 * 1.5),  # scale multiplies the clipped target
        (1.5, 0.5, 1.0, 0.5 + 0.5 * 1.5),
    ],
)
def test_accepted_fit_updates_the_lr_by_smoothing_the_clipped_newton_step(eta_star, gamma, scale, expected):
    fit = GenFit(eta_star=eta_star, curvature=1.0, slope=eta_star, accepted=True, reason="accepted")
    assert update_lr(1.0, fit, gamma=gamma, scale=scale) == pytest.approx(expected, rel=1e-15)
    assert update_lr(2.0, fit, gamma=gamma, scale=scale) == pytest.approx(
        gamma * 2.0 + (1 - gamma) * scale * min(max(eta_star, 1.0), 4.0), rel=1e-15
    )


def _tiny_regression(dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    model = nn.Linear(32, 16).to(dtype)
    x = torch.randn(8, 32, dtype=dtype)
    y = torch.randn(8, 16, dtype=dtype)
    return model, x, y


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_probe_losses_are_taken_at_theta1_and_its_mirror_and_leave_theta1_bit_identical(dtype):
    model, x, y = _tiny_regression(dtype)
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.5)

    def loss_fn() -> float:
        return float(nn.functional.mse_loss(model(x).float(), y.float()))

    theta0 = [p.detach().clone() for p in params]
    nn.functional.mse_loss(model(x).float(), y.float()).backward()
    optimizer.step()
    theta1 = [p.detach().clone() for p in params]
    names = [name for name, _ in model.named_parameters()]
    mirror = {n: (2.0 * t0.float() - t1.float()).to(dtype) for n, t0, t1 in zip(names, theta0, theta1)}
    with torch.no_grad():
        expected_minus = loss_fn()
        expected_plus = float(nn.functional.mse_loss(functional_call(model, mirror, (x,)).float(), y.float()))

    l_minus, l_plus = probe_losses(params, [t.clone() for t in theta0], loss_fn)

    assert (l_minus, l_plus) == (expected_minus, expected_plus)
    assert l_plus > l_minus  # the mirror point sits on the ascent side
    assert all(torch.equal(p, t1) for p, t1 in zip(params, theta1))


def test_probe_losses_restore_theta1_even_when_the_second_probe_raises():
    model, x, y = _tiny_regression()
    params = list(model.parameters())
    theta0 = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.add_(0.1)
    theta1 = [p.detach().clone() for p in params]
    calls = []

    def loss_fn() -> float:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return 0.0

    with pytest.raises(RuntimeError):
        probe_losses(params, theta0, loss_fn)
    assert all(torch.equal(p, t1) for p, t1 in zip(params, theta1))


def test_gen_with_adamw_advances_the_moments_once_per_step_like_a_run_without_probes():
    model, x, y = _tiny_regression()
    replay_model, _, _ = _tiny_regression()
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=0.05, weight_decay=0.1)
    scheduler = GenScheduler(optimizer, interval=1)

    def loss_fn() -> float:
        return float(nn.functional.mse_loss(model(x), y))

    lrs = []
    for step in range(5):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        assert scheduler.should_probe(step)
        theta0 = [p.detach().clone() for p in params]
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.observe(loss.item(), *probe_losses(params, theta0, loss_fn))
        scheduler.step()
    assert scheduler.probes == 5
    assert len(set(lrs)) > 1, "GeN never moved the lr: the replay would not test anything"

    replay = torch.optim.AdamW(replay_model.parameters(), lr=0.05, weight_decay=0.1)
    for lr in lrs:
        replay.zero_grad()
        nn.functional.mse_loss(replay_model(x), y).backward()
        replay.param_groups[0]["lr"] = lr
        replay.step()

    for p, q in zip(params, replay_model.parameters()):
        state, replay_state = optimizer.state[p], replay.state[q]
        assert int(state["step"]) == 5
        assert torch.equal(state["exp_avg"], replay_state["exp_avg"])
        assert torch.equal(state["exp_avg_sq"], replay_state["exp_avg_sq"])
        assert torch.equal(p, q)


def test_observe_fits_in_units_of_the_lr_the_step_used_and_scales_every_group_alike():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.1}])
    factors = {0: 0.5, 1: 0.25}
    scheduler = GenScheduler(optimizer, factor=factors.__getitem__)
    assert optimizer.param_groups[0]["lr"] == 0.5
    # Probed at lr 0.5 with A = B = 1: eta* = 1 = 2*lr (inside the clip). The schedule factor at the
    # probed step (0.5) scales the target: next lr = 0.9*0.5 + 0.1*0.5*1.0 = 0.5, for the step whose
    # factor is 0.25, so eta_GeN = 0.5 / 0.25 = 2.
    fit = scheduler.observe(1.0, l_minus=1.0 - 0.5 + 0.125, l_plus=1.0 + 0.5 + 0.125)
    assert fit.eta_star == pytest.approx(1.0)
    assert scheduler.etas == pytest.approx([2.0, 0.2])
    assert (scheduler.probes, scheduler.accepted) == (1, 1)
    assert scheduler.last_fit["reason"] == "accepted" and scheduler.last_fit["l_plus"] == 1.625
    optimizer.step()
    scheduler.step()
    assert scheduler.get_last_lr() == pytest.approx([0.5, 0.05])


def _linear_decay(total: int):
    return lambda step: max(0.0, (total - step) / total)


def _run_schedule(factor, eta_star, steps: int, lr: float = 0.1, interval: int = 1, accept: bool = True):
    """Drive GenScheduler with fits whose optimum is eta_star(step); return the lr of every step."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = GenScheduler(optimizer, factor=factor, interval=interval)
    lrs = []
    for step in range(steps):
        used = optimizer.param_groups[0]["lr"]
        lrs.append(used)
        optimizer.step()
        if scheduler.should_probe(step):
            # L(theta0 - s*Delta) = 1 - s*B + s^2*A/2 with A = 1 and B = eta*: its optimum is eta*.
            a, b = (1.0, eta_star) if accept else (-1.0, eta_star)
            scheduler.observe(1.0, 1.0 - used * b + used**2 * a / 2, 1.0 + used * b + used**2 * a / 2)
        scheduler.step()
    return lrs


def test_a_decaying_schedule_still_decays_under_gen_by_the_formula():
    """lr_{t+1} = gamma*lr_t + (1-gamma)*f(t)*clip(eta*, lr_t/2, 2 lr_t): hand-iterated, then compared."""
    factor = _linear_decay(100)
    lrs = _run_schedule(factor, eta_star=0.1, steps=100)
    expected, lr = [], 0.1
    for step in range(100):
        expected.append(lr)
        lr = 0.9 * lr + 0.1 * factor(step) * min(max(0.1, lr / 2), 2 * lr)
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert [round(lrs[t], 3) for t in (50, 75, 90)] == [0.06, 0.03, 0.011]
    # Without the schedule the same fits keep the lr at eta*: the decay is the schedule's doing.
    assert _run_schedule(lambda step: 1.0, eta_star=0.1, steps=100)[90] == pytest.approx(0.1)


@pytest.mark.parametrize("interval", [1, 4])
def test_rejected_fits_leave_the_schedule_in_charge(interval):
    factor = _linear_decay(100)
    lrs = _run_schedule(factor, eta_star=0.1, steps=100, interval=interval, accept=False)
    assert lrs == pytest.approx([0.1 * factor(t) for t in range(100)], rel=1e-12)


def test_between_probes_the_lr_follows_the_schedule_from_the_last_estimate():
    factor = _linear_decay(100)
    lrs = _run_schedule(factor, eta_star=0.1, steps=12, interval=4)
    for t in range(2, 12):
        if t % 4 != 1:  # within a probe interval: the schedule's own ratio
            assert lrs[t] / lrs[t - 1] == pytest.approx(factor(t) / factor(t - 1), rel=1e-12)


def test_should_probe_honours_the_interval_and_skips_steps_at_zero_lr():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = GenScheduler(optimizer, factor=lambda step: min(1.0, step / 2), interval=3)
    assert [step for step in range(10) if scheduler.should_probe(step)] == [3, 6, 9]


@pytest.mark.parametrize("kwargs", [{"interval": 0}, {"gamma": 1.0}, {"gamma": -0.1}])
def test_scheduler_rejects_an_invalid_interval_or_gamma(kwargs):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError):
        GenScheduler(optimizer, **kwargs)


def test_scheduler_state_survives_a_weights_only_round_trip_and_resumes_identically(tmp_path):
    def factor(step: int) -> float:
        return 0.9**step

    def build() -> GenScheduler:
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        return GenScheduler(optimizer, factor=factor, interval=2, gamma=0.8)

    scheduler = build()
    for l_plus in (1.7, 1.0, math.inf):
        scheduler.observe(1.0, 0.8, l_plus)
        scheduler.optimizer.step()
        scheduler.step()
    assert "factor" not in scheduler.state_dict()
    torch.save(scheduler.optimizer.state_dict(), tmp_path / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp_path / "scheduler.pt")

    resumed = build()  # Trainer's order: scheduler built, then optimizer and scheduler states loaded
    resumed.optimizer.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    resumed.load_state_dict(torch.load(tmp_path / "scheduler.pt", weights_only=True))
    for key in ("etas", "probes", "accepted", "last_epoch", "interval", "gamma"):
        assert getattr(resumed, key) == getattr(scheduler, key), key
    assert resumed.last_fit["reason"] == scheduler.last_fit["reason"] == "fit_failed"
    assert (resumed.probes, resumed.accepted) == (3, 1)
    for sched in (scheduler, resumed):
        sched.observe(1.0, 0.9, 1.3)
        sched.optimizer.step()
        sched.step()
    assert resumed.etas == scheduler.etas
    assert resumed.get_last_lr() == scheduler.get_last_lr()
