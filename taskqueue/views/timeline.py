"""The report's timeline picture (SVG), small at any size of run.

A small run (up to ``BAR_LIMIT`` attempts) gets one lane per slot and one bar per attempt,
labelled by its row. A big one gets one lane per worker shaded by how busy its slots were
(``BusyBins``: a fixed number of time bins that double in width as the run grows, so memory
and the picture's size stay flat however many tasks there were). Time labels fall on round
values in a fitting unit (``ticks``). Every text from the records (the title's run, worker names,
tasks) goes through ``views.shown``: controls shown as stand-ins, so the picture stays valid
XML whatever a task holds, and bidirectional text isolated.
"""

from __future__ import annotations

import math
from array import array
from html import escape

from taskqueue.views.shown import isolated, visible

BAR_LIMIT = 2000  # attempts drawn as bars; beyond, lanes are shaded by utilisation
MAX_BINS = 512
MAX_LANES = 50  # lanes in a big run's picture; the rest are named in a line
OUTCOME_COLOURS = {"done": "#4e79a7", "failed": "#f28e2b", "dead": "#e15759",
                   "cancelled": "#9c9c9c"}
UNITS = [(1e-3, "ms", 0.0), (1.0, "s", 1.0), (60.0, "min", 300.0), (3600.0, "h", 10800.0)]


def ticks(span: float, most: int = 7) -> list[tuple[float, str]]:
    """Round positions (seconds from the start) and their labels over 0..*span*: steps of 1, 2,
    2.5 or 5 times a power of ten, in the unit that suits the span (0.2 s -> ms, 3 h -> h)."""
    span = max(span, 1e-3)
    scale, unit = next((s, u) for s, u, from_span in reversed(UNITS) if span >= from_span)
    length = span / scale
    raw = length / (most - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    count = int(length / step + 1e-9)
    labels = []
    for n in range(count + 1):
        value = n * step
        text = f"{value:.{max(0, -math.floor(math.log10(step)))}f}"
        text = text.rstrip("0").rstrip(".") if "." in text else text
        labels.append((value * scale, f"{text} {unit}"))
    return labels


class BusyBins:
    """Busy seconds per lane over time, in at most MAX_BINS bins of one shared width."""

    def __init__(self) -> None:
        self.origin: float | None = None
        self.width = 0.01
        self.lanes: dict[str, array] = {}

    def add(self, lane: str, start: float, end: float) -> None:
        end = max(end, start)
        if self.origin is None:
            self.origin = start
        if start < self.origin:
            self._extend_left(self.origin, start)
        while end > self.origin + self.width * MAX_BINS:
            self._coarsen()
        bins = self.lanes.get(lane)
        if bins is None:
            bins = self.lanes[lane] = array("d", bytes(8 * MAX_BINS))
        first = int((start - self.origin) / self.width)
        last = min(MAX_BINS - 1, int((end - self.origin) / self.width))
        for index in range(first, last + 1):
            left = self.origin + index * self.width
            bins[index] += max(0.0, min(end, left + self.width) - max(start, left))

    def _coarsen(self) -> None:
        self.width *= 2
        for bins in self.lanes.values():
            for index in range(MAX_BINS // 2):
                bins[index] = bins[2 * index] + bins[2 * index + 1]
            for index in range(MAX_BINS // 2, MAX_BINS):
                bins[index] = 0.0

    def _extend_left(self, origin: float, start: float) -> None:
        """Moves the bins' *origin* back to *start* or before (coarsening while the bins
        pushed off the right end are not empty)."""
        shift = math.ceil((origin - start) / self.width)
        while shift > MAX_BINS // 2:  # coarse enough that the shift fits
            self._coarsen()
            shift = math.ceil((origin - start) / self.width)
        while any(any(bins[MAX_BINS - shift:]) for bins in self.lanes.values()):
            self._coarsen()
            shift = math.ceil((origin - start) / self.width)
        for bins in self.lanes.values():
            bins[shift:] = bins[:MAX_BINS - shift]
            bins[:shift] = array("d", bytes(8 * shift))
        self.origin = origin - shift * self.width


def svg(title: str, start: float, end: float, lanes: list[tuple[str, str, int]],
        bars: list[dict] | None, bins: BusyBins | None, slots_of: dict[str, int]) -> str:
    """*lanes*: (key, label, done) in drawing order. *bars*: the attempts (small runs), keyed
    to lanes by their slot; else *bins*, keyed by worker, shaded by busy / (slots x time)."""
    shown, hidden = lanes[:MAX_LANES], len(lanes) - MAX_LANES
    lane = 34 if len(shown) <= 12 else 18
    left, width, top = 190, 760, 50
    span = max(end - start, 1e-3)
    height = top + lane * len(shown) + 40 + (16 if hidden > 0 else 0)

    def x(seconds: float) -> float:
        return left + width * (seconds - start) / span

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 20}" '
             f'height="{height}" font-family="sans-serif" font-size="12">',
             '<rect width="100%" height="100%" fill="white"/>',
             f'<text x="10" y="22" font-size="15">{escape(visible(title))}</text>']
    row_of = {key: index for index, (key, _, _) in enumerate(shown)}
    for index, (_key, label, done) in enumerate(shown):
        y = top + index * lane
        parts.append(f'<rect class="lane" x="{left}" y="{y}" width="{width}" '
                     f'height="{lane - 6}" fill="#f3f3f3"/>')
        parts.append(f'<text x="10" y="{y + lane / 2}">{escape(isolated(label[:22]))} '
                     f'({done})</text>')
    if bars is not None:
        parts += _bars(bars, row_of, x, top, lane)
    elif bins is not None and bins.origin is not None:
        parts += _shading(bins, bins.origin, row_of, slots_of, x, top, lane)
    axis_y = top + lane * len(shown) + 14
    for seconds, label in ticks(span):
        parts.append(f'<text x="{left + width * seconds / span:.1f}" y="{axis_y}" '
                     f'text-anchor="middle">{label}</text>')
    if hidden > 0:
        parts.append(f'<text x="10" y="{axis_y + 18}">... and {hidden} more workers, not '
                     'drawn (the table has them all)</text>')
    legend = OUTCOME_COLOURS if bars is not None else {"busy": "#4e79a7"}
    for index, (outcome, colour) in enumerate(legend.items()):
        x_legend = left + width - 285 + index * 75
        parts.append(f'<rect x="{x_legend}" y="12" width="12" height="12" fill="{colour}"/>'
                     f'<text x="{x_legend + 16}" y="22">{outcome}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _bars(bars: list[dict], row_of: dict[str, int], x, top: int, lane: int) -> list[str]:
    parts = []
    for event in bars:
        if event["worker"] not in row_of:
            continue
        y = top + row_of[event["worker"]] * lane
        x0, x1 = x(event["started"]), x(event["finished"])
        colour = OUTCOME_COLOURS.get(event.get("outcome", "done"), "#999")
        title = escape(f"row {visible(event.get('row'))}: {isolated(event.get('task', ''))} "
                       f"({event.get('seconds', 0):.2f} s, {visible(event.get('outcome'))})")
        parts.append(f'<g class="task"><title>{title}</title><rect x="{x0:.1f}" y="{y + 3}" '
                     f'width="{max(x1 - x0, 1.5):.1f}" height="{lane - 12}" rx="3" '
                     f'fill="{colour}" stroke="white"/>')
        if x1 - x0 > 18:
            parts.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{y + lane / 2 + 1}" fill="white" '
                         f'text-anchor="middle">{escape(visible(event.get("row", "")))}</text>')
        parts.append("</g>")
    return parts


def _shading(bins: BusyBins, origin: float, row_of: dict[str, int], slots_of: dict[str, int],
             x, top: int, lane: int) -> list[str]:
    """Utilisation in five shades; runs of one shade are one rectangle. *origin*: the bins'
    (set once any time was added)."""
    parts = []
    for key, row in row_of.items():
        values = bins.lanes.get(key)
        if values is None:
            continue
        capacity = bins.width * max(1, slots_of.get(key, 1))
        y = top + row * lane
        run_start, run_level = 0, -1
        for index in range(MAX_BINS + 1):
            level = -1 if index == MAX_BINS else min(5, math.ceil(5 * values[index] / capacity))
            if level == run_level:
                continue
            if run_level > 0:
                x0 = x(origin + run_start * bins.width)
                x1 = x(origin + index * bins.width)
                parts.append(f'<rect class="busy" x="{x0:.1f}" y="{y + 3}" '
                             f'width="{max(x1 - x0, 0.5):.1f}" height="{lane - 12}" '
                             f'fill="#4e79a7" fill-opacity="{0.2 * run_level:.1f}"/>')
            run_start, run_level = index, level
    return parts
