"""bench/sides.py, the chaos run's "longest a worker sat on a node that could not serve":
pure logic on log text (the logs are written as the worker writes them)."""

from bench.sides import Away, Stay, node_of, on_the_wrong_side, stays, summary

NODE0 = "amqp://guest:***@127.0.0.1:5701/%2F"
NODE1 = "amqp://guest:***@127.0.0.1:5702/%2F"
BEGAN = 12 * 3600  # the run began at 12:00:00 local time

LOG = f"""12:00:01 INFO    [w0-1] starting: queue 'chaos_7' at {NODE0}
12:00:01 INFO    connected to {NODE0}
12:00:01 INFO    publishing connection: connected to {NODE0}
12:00:30 WARNING publishing connection: connection to {NODE0} lost (StreamLostError); retrying
12:00:31 INFO    publishing connection: connected to {NODE1}
12:00:40 WARNING [w0-1] {NODE0} delivers nothing and our mark in the results stream has not \
come back for 12 s: the node cannot reach the cluster's majority (a network partition?); \
moving to the next URL
12:00:40 WARNING connection to {NODE0} lost (the node cannot reach the cluster's majority); \
retrying in 0.5 s (attempt 1)
12:00:41 INFO    connected again to {NODE1}
"""


def test_a_stay_begins_at_connected_and_ends_where_the_worker_left():
    found = stays("w0-1", LOG, BEGAN, exited=None)
    assert found == [Stay("w0-1", "127.0.0.1:5701", 1, 40),
                     Stay("w0-1", "127.0.0.1:5702", 41, float("inf"))]


def test_the_publishing_connections_moves_are_not_the_workers():
    log = "\n".join(LOG.splitlines()[:5])  # up to the publishing connection's move to node 1
    assert stays("w", log, BEGAN, exited=None) == [Stay("w", "127.0.0.1:5701", 1, float("inf"))]


def test_a_stay_not_left_lasts_until_the_process_exited():
    found = stays("w", f"12:00:05 INFO    connected to {NODE0}\n", BEGAN, exited=9.5)
    assert found == [Stay("w", "127.0.0.1:5701", 5, 9.5)]


def test_a_result_that_says_moving_to_the_next_url_is_not_a_move():
    log = (f"12:00:01 INFO    connected to {NODE0}\n"
           "12:00:05 INFO    [w/1] done row 3, id f:3:ab in 0.01 s: 'x' -> "
           "'moving to the next URL'\n")
    assert stays("w", log, BEGAN, exited=9.0) == [Stay("w", "127.0.0.1:5701", 1, 9.0)]


def test_a_line_just_before_the_run_began_is_not_a_day_later():
    log = f"11:59:59 INFO    connected to {NODE0}\n12:00:20 INFO    connected to {NODE1}\n"
    found = stays("w", log, BEGAN, exited=None)
    assert [(s.began, s.ended) for s in found] == [(-1, 20), (20, float("inf"))]


def test_a_run_over_midnight_keeps_counting():
    log = f"23:59:59 INFO    connected to {NODE0}\n00:00:09 INFO    connected to {NODE1}\n"
    found = stays("w", log, 23 * 3600 + 59 * 60 + 58.5, exited=None)
    assert [(s.began, s.ended) for s in found] == [(1, 11), (11, float("inf"))]


def test_the_longest_overlap_of_a_stay_with_its_node_away():
    away = Away(node_of(NODE0), 20.0, 45.0, "partition: node 0 cut off")
    other = Away(node_of(NODE1), 50.0, 60.0, "node 1's VM paused")
    found = stays("w0-1", LOG, BEGAN, exited=55.0)
    overlaps = on_the_wrong_side([away, other], found)
    assert [(seconds, stay.node, a.what) for seconds, stay, a in overlaps] == [
        (20.0, "127.0.0.1:5701", "partition: node 0 cut off"),  # 20..40 on node 0
        (5.0, "127.0.0.1:5702", "node 1's VM paused")]  # 50..55, then it exited
    assert summary([away, other], found).startswith(
        "20 s (w0-1, partition: node 0 cut off); a worker on a node away 2 times, 0 of them")


def test_a_worker_that_never_noticed_is_counted_as_staying_until_the_node_was_back():
    away = Away(node_of(NODE0), 5.0, 30.0, "node 0 cut off")
    stuck = [Stay("w", node_of(NODE0), 1.0, float("inf"))]
    assert summary([away], stuck).endswith("a worker on a node away 1 times, 1 of them until it "
                                           "was back")
    assert summary([], stuck) == "no node away"
    assert summary([away], [Stay("w", node_of(NODE1), 0, 99)]).startswith("0 s")


def test_a_copy_settled_just_after_the_outbox_sent_again_may_be_there_twice():
    """bench/chaos.py's listed cause for two copies in .dead: confirms stopped, the outbox sent
    again what it owed, and the copy was settled right after (make chaos, seed 148826)."""
    from bench.chaos import resent_copies

    log = ("21:07:05 ERROR   [w/1] dead-lettered row 1, id b4.csv:1:aa to 'q.dead': failed\n"
           "21:07:17 WARNING [w] the broker has not confirmed what we published 12 s ago and is "
           "not blocking us (a node lost?): reconnecting to send it again\n"
           "21:07:18 ERROR   [w/3] dead-lettered row 462, id b4.csv:462:90 to 'q.dead': failed\n"
           "21:07:20 WARNING [w/2] failed row 8, id b15.csv:8:04 (timed out); retry 1/2 in 0.5 s\n"
           "21:07:40 ERROR   [w/1] dead-lettered row 9, id b4.csv:9:bb to 'q.dead': failed\n")
    assert resent_copies(log) == {"b4.csv:462:90", "b15.csv:8:04"}
