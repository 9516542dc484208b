"""The worker's phase (worker/phase.py), pure logic: what a stop, a lost connection and a
subscribe do in each phase."""

from __future__ import annotations

import pytest

from taskqueue.worker.phase import (
    Phase,
    after_connection_lost,
    after_stop_request,
    subscribe_step,
)


def test_a_first_stop_drains_and_a_second_stops_now():
    assert after_stop_request(Phase.CONSUMING) == (Phase.DRAINING, False)
    assert after_stop_request(Phase.STARTING) == (Phase.DRAINING, False)
    assert after_stop_request(Phase.PAUSED) == (Phase.DRAINING, False)
    assert after_stop_request(Phase.DRAINING) == (Phase.DRAINING, True)
    assert after_stop_request(Phase.STOPPING) == (Phase.STOPPING, True)


@pytest.mark.parametrize("phase", [Phase.STARTING, Phase.CONSUMING, Phase.PAUSED,
                                   Phase.WAITING_FOR_SLOTS])
def test_a_lost_connection_reconnects_unless_stopping(phase):
    assert after_connection_lost(phase) is Phase.RECONNECTING


@pytest.mark.parametrize("phase", [Phase.DRAINING, Phase.STOPPING, Phase.STOPPED,
                                   Phase.RECONNECTING])
def test_a_lost_connection_leaves_a_stopping_worker_stopping(phase):
    assert after_connection_lost(phase) is phase


def test_subscribing_waits_for_busy_slots_and_never_happens_twice_or_while_stopping():
    assert subscribe_step(Phase.STARTING, paused=False, busy_slots=0) == "subscribe"
    assert subscribe_step(Phase.RECONNECTING, paused=False, busy_slots=1) == "wait"
    assert subscribe_step(Phase.WAITING_FOR_SLOTS, paused=False, busy_slots=0) == "subscribe"
    assert subscribe_step(Phase.PAUSED, paused=False, busy_slots=0) == "subscribe", "resumed"
    assert subscribe_step(Phase.RECONNECTING, paused=True, busy_slots=0) == "pause"
    for phase in (Phase.CONSUMING, Phase.DRAINING, Phase.STOPPING, Phase.STOPPED):
        assert subscribe_step(phase, paused=False, busy_slots=0) == "no", phase
