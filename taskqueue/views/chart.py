"""The history page's chart (SVG, drawn on the server: no chart library, no script in the page
to draw it, valid XML). Two panels over one time axis:

* attempts finished per minute, stacked by outcome (done, failed, dead, cancelled): one ``<g
  class="minute">`` per minute with any, its figures in ``data-*`` attributes and in its
  ``<title>`` (what a screen reader and a mouse pointer get);
* the queue's depth (ready, retrying, dead) as lines, broken where no sample was taken (before
  the dashboard started, or while the broker did not answer); one ``<g class="depth">`` per
  minute sampled, with its figures the same way.

The whole picture has a ``<title>`` and a ``<desc>`` saying the window's totals in words. No
text from a task is drawn: only numbers and times.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from html import escape

from taskqueue.views.shown import visible
from taskqueue.views.timeline import OUTCOME_COLOURS

DEPTH_COLOURS = {"ready": "#4e79a7", "retrying": "#f28e2b", "dead": "#e15759"}
LEFT, WIDTH, TOP = 70, 840, 50
BARS_HEIGHT, DEPTH_TOP, DEPTH_HEIGHT = 200, 300, 110
HEIGHT = DEPTH_TOP + DEPTH_HEIGHT + 40
TIME_STEPS = (5, 10, 15, 30, 60, 120, 180, 240, 360)  # minutes between time labels

Minutes = Sequence[tuple[float, "dict[str, int] | None"]]  # (minute's start, values or None)


def nice_top(largest: int) -> int:
    """A round top for an axis holding *largest* (1, 2, 5 times a power of ten)."""
    top = 1
    while top < largest:
        for factor in (2, 5 / 2, 2):
            top = int(top * factor)
            if top >= largest:
                break
    return top


def _clock(moment: float) -> str:
    return time.strftime("%H:%M", time.localtime(moment))


def history_svg(counts: Minutes, depth: Minutes, title: str) -> str:
    """*counts* and *depth*: the same minutes, oldest first."""
    span = max(len(counts), 1)
    step = WIDTH / span
    start = counts[0][0] if counts else 0.0

    def x(moment: float) -> float:
        return LEFT + WIDTH * (moment - start) / (60.0 * span)

    totals = {name: sum((values or {}).get(name, 0) for _, values in counts)
              for name in OUTCOME_COLOURS}
    title = escape(visible(title))
    words = ", ".join(f"{totals[name]} {name}" for name in OUTCOME_COLOURS)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{LEFT + WIDTH + 30}" '
             f'height="{HEIGHT}" font-family="sans-serif" font-size="12" role="img" '
             f'aria-labelledby="history-title history-desc" class="history-chart" '
             f'data-minutes="{span}" data-start="{start:.0f}" '
             + " ".join(f'data-{name}="{totals[name]}"' for name in OUTCOME_COLOURS) + ">",
             f'<title id="history-title">{title}</title>',
             f'<desc id="history-desc">Attempts finished per minute from {_clock(start)}: '
             f'{words}. Below, the queue depth sampled each minute.</desc>',
             '<rect width="100%" height="100%" fill="white"/>',
             f'<text x="10" y="20" font-size="15">{title}</text>']
    parts += _legend(OUTCOME_COLOURS, 30)
    parts += _bars(counts, x, step)
    parts += _depth(depth, x, step)
    parts += _time_axis(start, span, x)
    parts.append("</svg>")
    return "\n".join(parts)


def _legend(colours: dict[str, str], y: int) -> list[str]:
    parts = []
    for index, (name, colour) in enumerate(colours.items()):
        left = LEFT + WIDTH - 360 + index * 90
        parts.append(f'<rect x="{left}" y="{y - 10}" width="12" height="12" fill="{colour}"/>'
                     f'<text x="{left + 16}" y="{y}">{name}</text>')
    return parts


def _y_axis(top: int, height: int, largest: int, label: str) -> list[str]:
    high = nice_top(largest)
    bottom = top + height
    parts = [f'<line x1="{LEFT}" y1="{bottom}" x2="{LEFT + WIDTH}" y2="{bottom}" '
             'stroke="#888"/>',
             f'<line x1="{LEFT}" y1="{top}" x2="{LEFT}" y2="{bottom}" stroke="#888"/>',
             f'<text x="10" y="{top - 8}">{label}</text>']
    for value in (0, high // 2, high) if high >= 2 else (0, high):
        y = bottom - height * value / high
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{value}</text>'
                     f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + WIDTH}" y2="{y:.1f}" '
                     'stroke="#eee"/>')
    return parts


def _bars(counts: Minutes, x, step: float) -> list[str]:
    largest = max((sum(values.values()) for _, values in counts if values), default=0)
    high = nice_top(largest)
    parts = _y_axis(TOP, BARS_HEIGHT, largest, "attempts finished per minute")
    bottom = TOP + BARS_HEIGHT
    for moment, values in counts:
        if not values or not any(values.values()):
            continue
        said = ", ".join(f"{values.get(name, 0)} {name}" for name in OUTCOME_COLOURS)
        data = " ".join(f'data-{name}="{values.get(name, 0)}"' for name in OUTCOME_COLOURS)
        parts.append(f'<g class="minute" data-time="{moment:.0f}" {data}>'
                     f'<title>{_clock(moment)}: {said}</title>')
        y = float(bottom)
        for name, colour in OUTCOME_COLOURS.items():
            value = values.get(name, 0)
            if value:
                height = BARS_HEIGHT * value / high
                y -= height
                parts.append(f'<rect x="{x(moment):.1f}" y="{y:.1f}" '
                             f'width="{max(step - 0.5, 0.5):.1f}" height="{height:.1f}" '
                             f'fill="{colour}"/>')
        parts.append("</g>")
    return parts


def _depth(depth: Minutes, x, step: float) -> list[str]:
    sampled = [(moment, values) for moment, values in depth
               if values and any(v >= 0 for v in values.values())]
    largest = max((v for _, values in sampled for v in values.values()), default=0)
    high = nice_top(largest)
    parts = _y_axis(DEPTH_TOP, DEPTH_HEIGHT, largest, "queue depth (messages)")
    bottom = DEPTH_TOP + DEPTH_HEIGHT

    def y(value: int) -> float:
        return bottom - DEPTH_HEIGHT * value / high

    for name, colour in DEPTH_COLOURS.items():
        for line in _segments(depth, name):
            points = " ".join(f"{x(moment) + step / 2:.1f},{y(value):.1f}"
                              for moment, value in line)
            parts.append(f'<polyline class="depth-{name}" points="{points}" fill="none" '
                         f'stroke="{colour}" stroke-width="1.5"/>')
    for moment, values in sampled:
        said = ", ".join(f"{values[name]} {name}" for name in DEPTH_COLOURS if values[name] >= 0)
        data = " ".join(f'data-{name}="{values[name]}"' for name in DEPTH_COLOURS)
        ready_y = y(max(values["ready"], 0))
        parts.append(f'<g class="depth" data-time="{moment:.0f}" {data}>'
                     f'<title>{_clock(moment)}: {said}</title>'
                     f'<circle cx="{x(moment) + step / 2:.1f}" cy="{ready_y:.1f}" '
                     f'r="2" fill="{DEPTH_COLOURS["ready"]}"/></g>')
    for index, (name, colour) in enumerate(DEPTH_COLOURS.items()):
        left = LEFT + WIDTH - 270 + index * 90
        parts.append(f'<rect x="{left}" y="{DEPTH_TOP - 20}" width="12" height="3" '
                     f'fill="{colour}"/><text x="{left + 16}" y="{DEPTH_TOP - 14}">{name}</text>')
    return parts


def _segments(depth: Minutes, name: str) -> list[list[tuple[float, int]]]:
    """Runs of consecutive sampled minutes of *name*: a line is broken at a gap."""
    lines: list[list[tuple[float, int]]] = [[]]
    for moment, values in depth:
        value = values.get(name, -1) if values else -1
        if value >= 0:
            lines[-1].append((moment, value))
        elif lines[-1]:
            lines.append([])
    return [line for line in lines if line]


def _time_axis(start: float, span: int, x) -> list[str]:
    every = next((s for s in TIME_STEPS if span / s <= 8), TIME_STEPS[-1])
    parts = []
    base = int(start // 60)
    for minute in range(base, base + span + 1):
        if minute % every:
            continue
        left = x(minute * 60.0)
        parts.append(f'<line x1="{left:.1f}" y1="{TOP + BARS_HEIGHT}" x2="{left:.1f}" '
                     f'y2="{TOP + BARS_HEIGHT + 5}" stroke="#888"/>'
                     f'<text x="{left:.1f}" y="{TOP + BARS_HEIGHT + 18}" text-anchor="middle">'
                     f'{_clock(minute * 60.0)}</text>'
                     f'<text x="{left:.1f}" y="{HEIGHT - 12}" text-anchor="middle">'
                     f'{_clock(minute * 60.0)}</text>')
    return parts
