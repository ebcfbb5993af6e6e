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
    clock.observe(Version(5000, 3, "other"))
    assert clock.tick(1000) > Version(5000, 3, "other")
