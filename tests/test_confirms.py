"""Publisher-confirm bookkeeping: which pending tags one Ack/Nack settles (pure logic)."""

from __future__ import annotations

import pika
from pika.frame import Method

from taskqueue.broker.frames import settled_tags


def frame(kind, tag: int, multiple: bool) -> Method:
    return Method(1, kind(delivery_tag=tag, multiple=multiple))


def test_single_ack_settles_only_its_tag():
    pending = {1: "a", 2: "b", 3: "c"}
    assert settled_tags(frame(pika.spec.Basic.Ack, 2, False), pending) == (True, [2])


def test_multiple_ack_settles_everything_up_to_its_tag():
    pending = {4: "a", 5: "b", 7: "c", 9: "d"}
    assert settled_tags(frame(pika.spec.Basic.Ack, 7, True), pending) == (True, [4, 5, 7])


def test_nack_is_reported_as_not_acked():
    pending = {1: "a", 2: "b"}
    assert settled_tags(frame(pika.spec.Basic.Nack, 2, True), pending) == (False, [1, 2])


def test_a_confirm_for_an_unknown_tag_settles_nothing():
    assert settled_tags(frame(pika.spec.Basic.Ack, 8, False), {1: "a"}) == (True, [])
