"""``/metrics``: the dashboard's numbers in Prometheus's text format, made at each scrape from
what the feed holds (feed.py), by the conventions: base units (seconds), ``_total`` counters,
and no unbounded label (no task, row or run id; a worker's name only while it is heard from:
a gone worker's series are removed).

  taskqueue_tasks_published_total{queue}          tasks the emitters published (totals.py)
  taskqueue_tasks_total{queue,outcome}            attempts recorded, by outcome
  taskqueue_task_duration_seconds{queue}          histogram of attempts' run time (cancelled
                                                  attempts are not in it)
  taskqueue_task_wait_seconds{queue}              histogram of the wait, published -> started
  taskqueue_queue_messages{queue,state}           ready / retrying / dead, now
  taskqueue_parked_tasks{queue}                   tasks a rate limit parked in the queue's
                                                  tiers, now (absent until read, or while a
                                                  tier is one the broker will not count)
  taskqueue_tasks_in_progress{queue}              slots busy now
  taskqueue_consumers{queue}                      consumers of the queue, now
  taskqueue_oldest_ready_task_age_seconds{queue}  an estimate (below)
  taskqueue_workers{queue,state}                  workers by state (busy/idle/paused/gone/...)
  taskqueue_worker_busy_slots{queue,worker}       per worker heard from
  taskqueue_worker_slots{queue,worker}
  taskqueue_dashboard_up{queue}                   1 while the dashboard reads the broker
  taskqueue_dashboard_live_pages{queue}           live pages open (a hidden tab closes its own)

The oldest ready task's age: the queue is first in, first out, so the oldest task waiting was
published just after the newest task a worker took; its age is the time since that task was
published (none taken yet: since the current run began).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry

from taskqueue.web.feed import DashboardFeed
from taskqueue.web.snapshot import workers_of
from taskqueue.web.totals import Histogram

OUTCOMES = ("done", "failed", "dead", "cancelled")
WORKER_STATES = ("busy", "idle", "paused", "gone", "stopped")


class FeedCollector:
    """A Prometheus collector over one DashboardFeed (read under its lock)."""

    def __init__(self, feed: DashboardFeed, pages: Callable[[], int] = lambda: 0) -> None:
        self.feed, self.pages = feed, pages

    def collect(self) -> Iterator[Metric]:
        feed, queue = self.feed, self.feed.spec.name
        with feed.lock:  # made whole under the lock, handed out after it
            made = [*self._tasks(queue), *self._queue(queue, time.time()),
                    *self._workers(queue, time.time())]
        yield from made
        up = GaugeMetricFamily("taskqueue_dashboard_up", "1 while the dashboard reads the "
                               "broker, else 0", labels=["queue"])
        up.add_metric([queue], 1.0 if feed.connected and feed.alive else 0.0)
        yield up
        yield _gauge("taskqueue_dashboard_live_pages", "Live pages open now (each holds a "
                     "stream)", queue, self.pages())

    def _tasks(self, queue: str) -> Iterator[Metric]:
        totals = self.feed.totals
        published = CounterMetricFamily(
            "taskqueue_tasks_published", "Tasks the emitters published (confirmed by the "
            "broker), as their run records say: it steps up as each emitter finishes",
            labels=["queue"])
        published.add_metric([queue], totals.published)
        yield published
        tasks = CounterMetricFamily("taskqueue_tasks", "Task attempts recorded, by outcome",
                                    labels=["queue", "outcome"])
        other = sum(n for outcome, n in totals.outcomes.items() if outcome not in OUTCOMES)
        for outcome in OUTCOMES:  # a fixed set: a stranger's outcome is "other"
            tasks.add_metric([queue, outcome], totals.outcomes[outcome])
        tasks.add_metric([queue, "other"], other)
        yield tasks
        yield _histogram("taskqueue_task_duration_seconds", "How long attempts ran, in "
                         "seconds (cancelled attempts are not counted)", queue, totals.duration)
        yield _histogram("taskqueue_task_wait_seconds", "How long tasks waited from published "
                         "to started, in seconds", queue, totals.wait)

    def _queue(self, queue: str, now: float) -> Iterator[Metric]:
        state = self.feed.state
        counts = state.counts
        messages = GaugeMetricFamily("taskqueue_queue_messages", "Messages in the queue and "
                                     "its companions, by state", labels=["queue", "state"])
        for name, value in (("ready", counts.ready), ("retrying", counts.retry),
                            ("dead", counts.dead)):
            if value is not None:
                messages.add_metric([queue, name], value)
        yield messages
        if state.parked is not None:  # 0 once read on a queue without tiers: a series to graph
            yield _gauge("taskqueue_parked_tasks", "Tasks a rate limit parked in the queue's "
                         "wait tiers (<queue>.wait.<N>s), now", queue, state.parked)
        yield _gauge("taskqueue_tasks_in_progress", "Slots busy on a task now", queue,
                     state.in_progress(now))
        if counts.consumers is not None:
            yield _gauge("taskqueue_consumers", "Consumers of the queue now", queue,
                         counts.consumers)
        age = oldest_ready_age(self.feed, now)
        if age is not None:
            yield _gauge("taskqueue_oldest_ready_task_age_seconds", "Estimated age of the "
                         "oldest task waiting, in seconds", queue, age)

    def _workers(self, queue: str, now: float) -> Iterator[Metric]:
        by_worker = workers_of(self.feed.state, now)
        workers = GaugeMetricFamily("taskqueue_workers", "Workers by state",
                                    labels=["queue", "state"])
        for kind in WORKER_STATES:
            workers.add_metric([queue, kind],
                               sum(1 for k, _ in by_worker.values() if k == kind))
        yield workers
        busy = GaugeMetricFamily("taskqueue_worker_busy_slots", "A worker's slots busy now",
                                 labels=["queue", "worker"])
        slots = GaugeMetricFamily("taskqueue_worker_slots", "A worker's slots",
                                  labels=["queue", "worker"])
        for name, (kind, worker_slots) in sorted(by_worker.items()):
            if kind in ("gone", "stopped"):
                continue  # its series end with it
            busy.add_metric([queue, name], sum(1 for s in worker_slots if s.state == "busy"))
            slots.add_metric([queue, name], len(worker_slots))
        yield busy
        yield slots


def oldest_ready_age(feed: DashboardFeed, now: float) -> float | None:
    """See the module docstring; None while the queue's count is unknown."""
    state = feed.state
    ready = state.counts.ready
    if ready is None:
        return None
    if ready == 0:
        return 0.0
    if state.last_wait is not None:
        started, waited = state.last_wait
        return max(0.0, now - (started - waited))
    line = feed.totals.runs.get(state.run_id)
    if line is not None and line.started != float("inf"):
        return max(0.0, now - line.started)
    return None


def _gauge(name: str, text: str, queue: str, value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, text, labels=["queue"])
    gauge.add_metric([queue], value)
    return gauge


def _histogram(name: str, text: str, queue: str, histogram: Histogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, text, labels=["queue"])
    family.add_metric([queue], histogram.cumulative(), histogram.sum)
    return family


def registry_of(feed: DashboardFeed, pages: Callable[[], int] = lambda: 0) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FeedCollector(feed, pages))
    return registry


class Together:
    """Several queues' collectors as one (the server's /metrics with several queues): each
    family once, with every queue's samples (a family twice is not the text format)."""

    def __init__(self, registries: list[CollectorRegistry]) -> None:
        self.registries = registries

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for registry in self.registries:
            for family in registry.collect():
                kept = families.setdefault(family.name, family)
                if kept is not family:
                    kept.samples.extend(family.samples)
        yield from families.values()


def registry_of_all(registries: list[CollectorRegistry]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Together(registries))
    return registry
