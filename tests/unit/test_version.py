from kvlab.core.version import HybridClock, Version


def test_versions_order_by_time_then_counter_then_coordinator():
    assert Version(1, 5, "z") < Version(2, 0, "a")
    assert Version(2, 0, "z") < Version(2, 1, "a")
    assert Version(2, 1, "a") < Version(2, 1, "b")


def test_round_trips_through_text():
    v = Version(1795922712346, 7, "proxy")
    assert str(v) == "1795922712346.7@proxy"
    assert Version.parse(str(v)) == v


def test_clock_stays_monotonic_when_wall_clock_steps_back():
    clock = HybridClock("p")
    a = clock.tick(1000)
    b = clock.tick(900)  # NTP stepped the clock back
    c = clock.tick(1000)
    assert a < b < c


def test_clock_moves_past_observed_versions():
    clock = HybridClock("p")
    clock.observe(Version(5000, 3, "other"), now_ms=1000)
    assert clock.tick(1000) > Version(5000, 3, "other")


def test_clock_ignores_a_version_far_in_its_future():
    # One broken clock elsewhere must not drag every later write an hour ahead.
    clock = HybridClock("p", max_ahead_ms=60_000)
    clock.observe(Version(1000 + 3_600_000, 0, "rogue"), now_ms=1000)
    assert clock.tick(1000) == Version(1000, 0, "p")
    clock.observe(Version(1000 + 59_000, 0, "close"), now_ms=1000)
    assert clock.tick(1000) > Version(1000 + 59_000, 0, "close")


def test_a_restored_high_water_mark_keeps_a_restarted_clock_above_its_last_run():
    first = HybridClock("p")
    last = first.tick(10_000)
    second = HybridClock("p")  # the coordinator restarted, its wall clock 5 s behind
    second.restore(first.high_water_ms)
    assert second.tick(5_000) > last
