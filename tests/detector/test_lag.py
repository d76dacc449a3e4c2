"""The detector's judging clock (services/detector/lag.py): plain unit tests."""

from services.detector.lag import HeardUntil, SeenHeartbeats


def test_nothing_owned_judges_at_the_wall_clock() -> None:
    assert HeardUntil().judge_at(100.0) == 100.0


def test_a_partition_behind_holds_the_clock_until_its_high_watermark_is_reached() -> None:
    h = HeardUntil()
    h.own({0, 1}, now=10.0)
    h.fetched(0, position=500, highwater=500, polled_at=12.0)  # caught up at 12
    h.fetched(1, position=200, highwater=9000, polled_at=12.0)  # records still queued
    assert h.judge_at(13.0) == 10.0
    assert h.behind(13.0, more_than=2.0) == {1: 3.0}
    h.fetched(1, position=9000, highwater=9000, polled_at=12.5)
    assert h.judge_at(13.0) == 12.0 and h.behind(13.0, more_than=2.0) == {}


def test_never_later_than_now_and_never_backwards() -> None:
    h = HeardUntil()
    h.own({0}, now=10.0)
    h.fetched(0, position=5, highwater=5, polled_at=20.0)
    assert h.judge_at(15.0) == 15.0
    h.fetched(0, position=5, highwater=5, polled_at=18.0)  # an older poll time changes nothing
    assert h.until[0] == 20.0


def test_unknown_high_watermark_or_unowned_partition_changes_nothing() -> None:
    h = HeardUntil()
    h.own({2}, now=10.0)
    h.fetched(2, position=0, highwater=None, polled_at=None)
    h.fetched(3, position=7, highwater=7, polled_at=30.0)  # not owned
    assert h.until == {2: 10.0}
    h.own({2}, now=50.0)  # owning again keeps what is known
    assert h.until == {2: 10.0}
    h.drop({2})
    assert h.judge_at(60.0) == 60.0


def test_reaching_an_earlier_fetchs_watermark_counts_though_newer_fetches_came_in() -> None:
    h = HeardUntil()
    h.own({0}, now=10.0)
    h.fetched(0, position=100, highwater=4000, polled_at=11.0)  # a burst fetched at 11
    h.fetched(0, position=3000, highwater=6000, polled_at=12.0)  # another fetch at 12, still behind
    assert h.until[0] == 10.0
    h.fetched(0, position=4500, highwater=6000, polled_at=12.0)  # past the fetch of 11, not of 12
    assert h.until[0] == 11.0
    h.fetched(0, position=6000, highwater=6000, polled_at=12.0)
    assert h.until[0] == 12.0 and not h.polls[0]


def test_duplicates_and_older_heartbeats_are_stale() -> None:
    seen = SeenHeartbeats()
    assert not seen.stale("h1", 5, 100.0)
    assert seen.stale("h1", 5, 100.0)           # the same one again
    assert seen.stale("h1", 3, 98.0)            # an older one, late
    assert not seen.stale("h1", 6, 101.0)
    assert not seen.stale("h2", 1, 50.0)        # hosts are apart


def test_a_restarted_executor_and_a_clock_stepped_back_get_through() -> None:
    seen = SeenHeartbeats()
    assert not seen.stale("h1", 500, 100.0)
    assert not seen.stale("h1", 1, 130.0)       # restarted: counts from 1, sends later
    assert seen.stale("h1", 499, 99.0)          # the old incarnation's, late: still stale
    assert not seen.stale("h1", 501, 90.0)      # its clock stepped back, the count goes on
    assert seen.stale("h1", 2, 120.0)
