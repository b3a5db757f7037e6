"""The run rules, with made-up clocks: no threads, no sleeps."""

from __future__ import annotations

import pytest

from nbmonitor import rules
from nbmonitor.rules import Due, State


def at(
    since: float, eta: float | None = 1.0, grace: float = 2.0, alive: bool | None = True, lag: float = 0.0
) -> State:
    return rules.state("running", alive=alive, since_progress=since, eta=eta, grace=grace, lag=lag)


@pytest.mark.parametrize(
    ("eta", "grace"),
    [(1.0, 2.0), (10.0, 2.0), (30.0, 3.0), (100.0, 10.0), (600.0, 60.0), (36000.0, 60.0)],
)
def test_default_grace_is_a_tenth_of_the_eta_within_2_and_60_seconds(eta: float, grace: float) -> None:
    assert rules.default_grace(eta) == pytest.approx(grace)


def test_grace_of_the_run_wins_over_the_watcher_which_wins_over_the_default() -> None:
    assert rules.grace_for(100.0, 5.0, 7.0) == 5.0
    assert rules.grace_for(100.0, None, 7.0) == 7.0
    assert rules.grace_for(100.0, None, None) == 10.0
    assert rules.grace_for(100.0, 0.0, 7.0) == 0.0


def test_a_run_is_running_then_late_then_stalled_as_time_passes() -> None:
    assert at(0.0) is State.RUNNING
    assert at(1.0) is State.RUNNING
    assert at(1.01) is State.LATE
    assert at(3.0) is State.LATE
    assert at(3.01) is State.STALLED


def test_a_view_that_may_trail_the_run_moves_every_deadline_by_that_lag() -> None:
    assert at(1.2, lag=0.2) is State.RUNNING
    assert at(1.21, lag=0.2) is State.LATE
    assert at(3.2, lag=0.2) is State.LATE
    assert at(3.21, lag=0.2) is State.STALLED
    assert at(1.1, eta=1.0, grace=0.0, lag=0.2) is State.RUNNING  # even with no grace at all


def test_files_that_declare_no_write_lag_get_the_bound_of_their_writers() -> None:
    # Writers before write_lag wrote at most once a second on a 0.1 s tick.
    assert rules.write_lag(None) == pytest.approx(1.2)
    assert rules.write_lag(0.2) == pytest.approx(0.2)
    assert rules.write_lag(0.0) == 0.0


def test_a_run_without_eta_never_stalls_but_still_crashes() -> None:
    assert at(1e9, eta=None) is State.RUNNING
    assert at(0.0, eta=None, alive=False) is State.CRASHED


def test_a_dead_process_is_crashed_at_once_whatever_its_deadline() -> None:
    assert at(0.0, alive=False) is State.CRASHED


def test_unknown_liveness_falls_back_to_the_deadline() -> None:
    assert at(0.5, alive=None) is State.RUNNING
    assert at(10.0, alive=None) is State.STALLED


@pytest.mark.parametrize("status", ["finished", "failed", "interrupted"])
def test_reported_ends_win_over_everything(status: str) -> None:
    state = rules.state(status, alive=False, since_progress=1e6, eta=1.0, grace=0.0)
    assert state.value == status


def test_a_stall_is_due_once_per_progress_count() -> None:
    assert rules.due_events(State.STALLED, 7, set()) == [Due("stalled", "stalled-7")]
    assert rules.due_events(State.STALLED, 7, {"stalled-7"}) == []


def test_progress_after_a_stall_is_due_as_recovered_once() -> None:
    assert rules.due_events(State.RUNNING, 8, {"stalled-7"}) == [Due("recovered", "recovered-7")]
    assert rules.due_events(State.RUNNING, 9, {"stalled-7", "recovered-7"}) == []


def test_no_recovery_without_a_stall_and_none_while_still_stuck() -> None:
    assert rules.due_events(State.RUNNING, 8, set()) == []
    assert rules.due_events(State.LATE, 7, {"stalled-7"}) == []


def test_a_second_stall_first_closes_the_first() -> None:
    due = rules.due_events(State.STALLED, 9, {"stalled-7"})
    assert due == [Due("recovered", "recovered-7"), Due("stalled", "stalled-9")]


def test_finishing_after_a_stall_without_progress_counts_as_recovered() -> None:
    due = rules.due_events(State.FINISHED, 7, {"stalled-7"})
    assert due == [Due("recovered", "recovered-7"), Due("finished", "end")]


def test_failing_or_crashing_while_stalled_is_not_a_recovery() -> None:
    assert rules.due_events(State.CRASHED, 7, {"stalled-7"}) == [Due("crashed", "end")]
    assert rules.due_events(State.FAILED, 7, {"stalled-7"}) == [Due("failed", "end")]


def test_a_run_has_one_end_event_whoever_claims_it() -> None:
    assert rules.due_events(State.FINISHED, 3, {"end"}) == []
    assert rules.due_events(State.CRASHED, 3, {"end"}) == []


def test_claims_that_are_not_stalls_are_ignored() -> None:
    assert rules.due_events(State.RUNNING, 3, {"end", "stalled-x", "weird"}) == []
