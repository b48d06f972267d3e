"""The budget search: bisection over a pass's strength."""

from __future__ import annotations

import pytest

import numpy as np

from onnx_compress.budget import Budget, SearchOutcome, Trial, bisect_strength, refine, resolution_note
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


def _onehot(pred, classes=10):
    out = np.full((len(pred), classes), -1.0, np.float32)
    out[np.arange(len(pred)), pred] = 1.0
    return {"y": out}


@pytest.mark.parametrize("lost, gained", [(1, 0), (0, 1), (2, 2), (5, 1), (0, 0)])
def test_the_top1_standard_error_is_the_paired_one(lost, gained):
    """Constructed predictions on n = 269 samples: the candidate lost ``lost`` predictions the
    reference had right and gained ``gained`` it had wrong; both are wrong on 8 more. The paired (McNemar) standard error
    depends on the discordant pairs only: 100 sqrt(b + c - (b - c)^2 / n) / sqrt(n (n - 1));
    the unpaired error of two accuracies (which counts every sample, not the pairs) is larger."""
    from onnx_compress.runtime.metrics import score

    n = 269
    labels = np.arange(n) % 10
    reference = labels.copy()
    candidate = labels.copy()
    candidate[:lost] = (labels[:lost] + 1) % 10  # the candidate lost these
    reference[lost:lost + gained] = (labels[lost:lost + gained] + 1) % 10  # the candidate gained these
    both = slice(lost + gained, lost + gained + 8)  # both wrong (concordant): ~97 % accuracy, as the seed CNNs
    reference[both] = candidate[both] = (labels[both] + 2) % 10
    result = score("top1", _onehot(reference), _onehot(candidate), labels)
    b, c = lost, gained
    assert result.drop == pytest.approx(100 * (b - c) / n)
    expected = 100 * np.sqrt(b + c - (b - c) ** 2 / n) / np.sqrt(n * (n - 1))
    assert result.details["stderr"] == pytest.approx(expected)
    assert result.details["agreement"] == pytest.approx(100 * (n - b - c) / n)
    if b + c:
        p1, p2 = result.reference / 100, result.candidate / 100
        unpaired = 100 * np.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / n)
        assert result.details["stderr"] < unpaired


def _by_parts(drops, base=("base", 0.0, 0.0)):
    """An attempt for refine(): each part adds its drop; a part of drop None changes nothing."""
    calls = []

    def attempt(full):
        calls.append(full)
        if drops[full[-1]] is None:
            return None
        total = sum(drops[k] or 0.0 for k in full)
        return "+".join(full), total, 0.1
    return attempt, calls


def test_refine_keeps_each_part_that_still_holds_cumulatively():
    outcome = SearchOutcome(best="base", strength=0.5, trials=[Trial(1.0, 2.0, False), Trial(0.5, 0.0, True)])
    attempt, calls = _by_parts({"conv1": 0.2, "conv2": 0.3, "fc1": 0.1, "fc2": None})
    refined = refine(attempt, ["conv1", "conv2", "fc1", "fc2"], Budget(0.5, margin=1.0), outcome)
    # conv1: 0.2 + 0.1 holds; conv1+conv2: 0.5 + 0.1 does not; conv1+fc1: 0.3 + 0.1 holds; fc2 changes nothing
    assert calls == [("conv1",), ("conv1", "conv2"), ("conv1", "fc1"), ("conv1", "fc1", "fc2")]
    assert refined.best == "conv1+fc1" and refined.full == ("conv1", "fc1") and refined.strength == 0.5
    added = refined.trials[2:]
    assert [t.holds for t in added] == [True, False, True]  # no trial for the part that changed nothing
    assert all(t.holds == (t.drop + t.stderr <= 0.5 + 1e-9) for t in added)
    assert "refine: conv2 at full strength (with conv1)" == added[1].note


def test_refine_runs_only_below_full_strength_and_within_its_steps():
    attempt, calls = _by_parts({"a": 0.0, "b": 0.0, "c": 0.0})
    full = SearchOutcome(best="m", strength=1.0, trials=[])
    assert refine(attempt, ["a"], Budget(0.5), full).full == () and calls == []
    rolled_back = SearchOutcome(best=None, strength=0.0, trials=[])
    assert refine(attempt, ["a"], Budget(0.5), rolled_back).best is None and calls == []
    some = refine(attempt, ["a", "b", "c"], Budget(0.5), SearchOutcome(best="m", strength=0.5, trials=[]), steps=2)
    assert some.full == ("a", "b") and len(calls) == 2


def test_the_resolution_note_says_when_the_budget_is_finer_than_the_split():
    note = resolution_note("top1", 0.5, 269, 1.0)
    assert note is not None and "269 validation samples" in note and "0.37 +- 0.37" in note
    assert "400 or more" in note  # (1 + 1) x 100 / 0.5
    assert resolution_note("top1", 0.5, 400, 1.0) is None
    assert resolution_note("top1", 1.0, 269, 1.0) is None  # 0.74 <= 1.0: one lost image can hold
    assert resolution_note("top1", 0.5, 269, 0.0) is None  # the raw comparison: one image is 0.37 <= 0.5
    assert resolution_note("cosine", 0.001, 10, 1.0) is None and resolution_note("top1", None, 10, 1.0) is None


def test_the_default_bound_is_for_a_fresh_sample_and_credits_no_gain():
    """Default margin sqrt(2): one standard error of the drop on a new sample the size of the
    validation data; a measured gain counts as no drop (the search would pick lucky splits)."""
    from onnx_compress.budget import DEFAULT_MARGIN

    budget = Budget(0.5)
    assert budget.margin == DEFAULT_MARGIN == pytest.approx(2**0.5, abs=0.01)
    one = 100 / 269
    assert budget.bound(-one, one) == pytest.approx(DEFAULT_MARGIN * one)  # the gained image is not credited
    assert not budget.holds(-one, one) and not budget.holds(one, one)
    assert budget.holds(0.0, 0.35) and not budget.holds(0.0, 0.36)
    assert budget.remaining(-1.0, 0.0) == pytest.approx(0.5)


def _scores(margins, top):
    out = np.zeros((len(margins), 10))
    out[np.arange(len(margins)), top] = margins
    return out


def test_the_top1_standard_error_sees_score_shifts_that_changed_no_prediction():
    """No prediction changes, but the candidate shifts the confident samples' gaps by -3 while
    a fifth of the samples have margins below 3: the paired standard error is 0, the estimate
    from the scores (every shift tried against every margin) is not."""
    from onnx_compress.runtime.metrics import flip_rate_estimate, score

    n = 250
    labels = np.arange(n) % 10
    margins = np.where(np.arange(n) % 5 == 0, 1.0, 6.0)  # 50 uncertain, 200 confident samples
    reference = _scores(margins, labels)
    candidate = _scores(np.where(margins > 3, margins - 3.0, margins), labels)  # still right everywhere
    result = score("top1", {"y": reference}, {"y": candidate}, labels)
    assert result.drop == 0 and result.details["agreement"] == 100 and result.details["stderr_paired"] == 0
    expected = (50 / n) * (200 / n)  # an uncertain margin (1) meets a shift of -3
    assert flip_rate_estimate(reference, candidate, n) == pytest.approx(expected)
    assert result.details["changed_estimate"] == pytest.approx(100 * expected)
    assert result.details["stderr"] == pytest.approx(np.sqrt(1e4 * expected / (n - 1)))
    # probabilities are compared as logs: softmax outputs give the same estimate
    softmax = lambda x: np.exp(x) / np.exp(x).sum(1, keepdims=True)  # noqa: E731
    assert flip_rate_estimate(softmax(reference), softmax(candidate), n) == pytest.approx(expected)
    # an unchanged candidate, or one shifting every gap by less than the smallest margin: no error
    assert score("top1", {"y": reference}, {"y": reference}, labels).details["stderr"] == 0
    assert flip_rate_estimate(reference, _scores(margins - 0.5, labels), n) == 0
