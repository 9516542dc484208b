"""The worker's lanes (worker/lanes.py) without a broker: urgent deliveries first, but a normal
delivery held too long goes first, so a stream of urgent tasks cannot keep one in hand past the
broker's consumer timeout (it counts from the delivery, not from the start)."""

from __future__ import annotations

from taskqueue.worker.give_back import Held
from taskqueue.worker.lanes import NORMAL_HELD_AT_MOST, Lanes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def held(name: str) -> Held:
    return Held(channel=None, method=None, properties=None, body=name.encode())  # type: ignore[arg-type]


def taken(lanes: Lanes) -> str:
    got = lanes.take()
    assert got is not None
    return got.body.decode()


def test_urgent_first_then_normal_in_arrival_order():
    lanes = Lanes(Clock())
    lanes.hold(held("n1"), urgent=False)
    lanes.hold(held("u1"), urgent=True)
    lanes.hold(held("n2"), urgent=False)
    lanes.hold(held("u2"), urgent=True)
    assert [taken(lanes) for _ in range(4)] == ["u1", "u2", "n1", "n2"]
    assert lanes.take() is None


def test_a_normal_delivery_held_too_long_goes_before_the_urgent_ones():
    clock = Clock()
    lanes = Lanes(clock)
    lanes.hold(held("n1"), urgent=False)
    lanes.hold(held("n2"), urgent=False)
    for n in range(3):  # urgent tasks keep coming: each free slot takes one ...
        lanes.hold(held(f"u{n}"), urgent=True)
        clock.now += NORMAL_HELD_AT_MOST / 4
        assert taken(lanes) == f"u{n}"
    lanes.hold(held("u3"), urgent=True)
    clock.now += NORMAL_HELD_AT_MOST / 4  # ... until n1 has waited the limit
    assert taken(lanes) == "n1", "held as long as the limit: it goes first"
    assert taken(lanes) == "n2", "held longer still"
    assert taken(lanes) == "u3"
