"""Schedules registry, Zhu & Gupta cubic values, and pruning event epochs."""

import pytest

from npas_lightning.algorithms.schedules import (
    get_schedule,
    list_schedules,
    pruning_events,
    rate_at_fraction,
    register_schedule,
)


def test_registry_lists_the_named_schedules():
    assert {"cubic", "linear", "constant"} <= set(list_schedules())


def test_cubic_matches_zhu_gupta():
    cubic = get_schedule("cubic")
    for p in (0.0, 0.25, 0.5, 1.0):
        assert cubic(p) == pytest.approx(1 - (1 - p) ** 3)
    assert get_schedule("linear")(0.3) == pytest.approx(0.3)
    assert get_schedule("constant")(0.1) == 1.0


def test_rate_at_fraction_interpolates_sparsity():
    assert rate_at_fraction(4.0, 1.0) == pytest.approx(4.0)
    assert rate_at_fraction(4.0, 0.0) == pytest.approx(1.0)
    # half of 75 % sparsity = 37.5 % sparsity = rate 1.6
    assert rate_at_fraction(4.0, 0.5) == pytest.approx(1.6)


def test_pruning_events():
    assert pruning_events(3, 3, 1) == {3: 1.0}
    assert pruning_events(0, 4, 2) == pytest.approx({0: 1 / 3, 2: 2 / 3, 4: 1.0})
    ev = pruning_events(0, 5, 2)
    assert list(ev) == [0, 2, 4, 5] and ev[5] == 1.0
    assert all(a < b for a, b in zip(list(ev.values()), list(ev.values())[1:], strict=False))


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match=r"schedule='cosine' is not a registered schedule; expected one of \["):
        get_schedule("cosine")


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="schedule 'cubic' is already registered"):
        register_schedule("cubic")(lambda p: p)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((-1, 0, 1), r"start_epoch=-1 must be >= 0"),
        ((2, 1, 1), r"end_epoch=1 must be >= start_epoch=2"),
        ((0, 2, 0), r"frequency=0 must be an integer >= 1"),
    ],
)
def test_bad_events_are_refused(args, match):
    with pytest.raises(ValueError, match=match):
        pruning_events(*args)


def test_bad_progress_and_rate_are_refused():
    with pytest.raises(ValueError, match=r"progress=1.5 must lie in \[0, 1\]"):
        get_schedule("cubic")(1.5)
    with pytest.raises(ValueError, match=r"rate=0.5 must be >= 1.0"):
        rate_at_fraction(0.5, 1.0)
    with pytest.raises(ValueError, match=r"fraction=2 must lie in \[0, 1\]"):
        rate_at_fraction(2.0, 2)
