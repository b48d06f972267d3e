"""The budget search: bisection over a pass's strength."""

from __future__ import annotations

import pytest

from onnx_compress.budget import Budget, bisect_strength
from onnx_compress.errors import BudgetError


def _drop_grows_linearly(strength: float):
    return f"model@{strength:.4f}", 2.0 * strength  # drop 2 points at full strength


def test_full_strength_within_budget_needs_one_trial():
    outcome = bisect_strength(_drop_grows_linearly, Budget(max_drop=3.0))
    assert outcome.strength == 1.0 and len(outcome.trials) == 1


def test_bisection_finds_the_most_aggressive_strength_that_holds():
    outcome = bisect_strength(_drop_grows_linearly, Budget(max_drop=0.5), steps=6)
    # the true limit is 0.25; five halvings after the first trial land on it from below
    assert outcome.best == "model@0.2500" and outcome.strength == 0.25
    assert all(t.holds == (t.drop <= 0.5) for t in outcome.trials)
    assert [t.strength for t in outcome.trials][:3] == [1.0, 0.5, 0.25]


def test_nothing_holds_means_roll_back():
    outcome = bisect_strength(lambda s: ("m", 1.0), Budget(max_drop=0.1), steps=4)
    assert outcome.best is None and outcome.strength == 0.0 and len(outcome.trials) == 4


def test_unscalable_pass_stops_the_search():
    calls = []

    def attempt(strength):
        calls.append(strength)
        return ("m", 5.0) if strength == 1.0 else None

    outcome = bisect_strength(attempt, Budget(max_drop=1.0))
    assert outcome.best is None and calls == [1.0, 0.5]
    assert outcome.trials[-1].note == "pass cannot be scaled"


def test_budget_validation_and_remaining():
    with pytest.raises(BudgetError):
        Budget(max_drop=-1)
    assert Budget(0.5).remaining(0.2) == pytest.approx(0.3) and Budget(0.5).remaining(0.9) == 0.0
    assert Budget(None).holds(1e9)


def test_the_margin_adds_standard_errors_to_the_drop():
    budget = Budget(0.5, margin=1.0)
    # one lost image of 269 (0.37 +- 0.37 points) does not hold, nor do two flips that cancel;
    # one gained image does
    assert not budget.holds(100 / 269, 100 / 269)
    assert not budget.holds(0.0, 100 * 2**0.5 / 269)
    assert budget.holds(-100 / 269, 100 / 269)
    assert Budget(0.5, margin=0.84).holds(0.0, 100 * 2**0.5 / 269)
    assert budget.bound(0.1, 0.2) == pytest.approx(0.1 + 0.2)
    assert Budget(0.5, margin=0.0).holds(0.5, 10.0)  # margin 0: the raw drop
    assert budget.remaining(0.1, 0.2) == pytest.approx(0.5 - 0.1 - 0.2)
    with pytest.raises(BudgetError, match="margin"):
        Budget(0.5, margin=-1)


def test_the_search_judges_a_trial_by_its_drop_plus_margin():
    # the drop falls with strength but its standard error does not: only the margin decides
    outcome = bisect_strength(lambda s: (f"m@{s}", 0.1, 0.5 * s), Budget(0.5, margin=1.0), steps=4)
    # 0.1 + 0.5 s <= 0.5 holds up to s = 0.8: trials 1, 0.5, 0.75, 0.875
    assert [t.holds for t in outcome.trials] == [False, True, True, False]
    assert outcome.strength == 0.75 and all(t.stderr > 0 for t in outcome.trials)


def test_a_deadline_stops_the_search_after_the_full_strength_trial():
    import time

    calls = []

    def slow(strength):
        calls.append(strength)
        time.sleep(0.05)
        return f"m@{strength}", 2.0 * strength

    outcome = bisect_strength(slow, Budget(0.5), steps=5, deadline=time.perf_counter() + 0.01)
    assert calls == [1.0] and outcome.best is None
    assert "time budget" in outcome.trials[-1].note and outcome.trials[0].seconds >= 0.05
