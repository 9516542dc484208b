#!/usr/bin/env python3
"""Benchmark: one task's cycle at 1 slot, ours against the minimal loop, from the packets
(issue 29, item 5).

    sudo python bench/cycle.py                  # 3000 zero-work tasks, 3 alternating runs each
    sudo python bench/cycle.py --dots 1         # 10 ms tasks (300 of them unless --tasks)
    python bench/cycle.py --out FILE            # the report elsewhere (default bench/cycle.md)

At one slot a worker that records before it acks waits on the broker twice a task: deliver ->
(work, the record out) -> the record's confirm -> (the ack out) -> the next delivery. tasks/s
from the queue's depth (bench/peers.py) says how fast the whole was; on this 2-core VM the same
code varies 2x from run to run, so a 10% gap cannot be seen there in a few runs. The packets
can: tcpdump on the loopback gives each frame's time as it passes, so every task's cycle splits
into the worker's two parts (delivery in -> record out; confirm in -> ack out) and the broker's
two (record out -> confirm in; ack out -> next delivery in), thousands of cycles a run, each
part's median little moved by a stray stall. The steady rate is the deliveries between the 5th
and the 95th percentile of the run over their time (start-up and the idle exit left out).

Needs root (tcpdump, Debian's package) and the machine's RabbitMQ at 127.0.0.1:5672. Other
clients of that broker (a test suite) are told apart: only the connections of the measured
process (``ss -tnp``, polled while it runs) count.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.versus import ROOT, BenchError, delete_all, fill, tail

SECONDS_PER_DOT = 0.01
PACKET = re.compile(r"(\d+\.\d+) IP [\d.]+\.(\d+) > [\d.]+\.(\d+): tcp (\d+)")
SMALL = 60  # bytes: a lone ack, confirm, heartbeat; a delivery or a record is longer
PARTS = ("delivery in -> record out", "record out -> confirm in", "confirm in -> ack out",
         "ack out -> next delivery in")
WORKER_PARTS = (0, 2)  # the others are the broker's (and the loopback's)


@dataclass
class Contender:
    name: str
    describe: str
    parts: list[list[float]] = field(default_factory=list)  # per run: each part's median (s)
    rates: list[float] = field(default_factory=list)  # per run: the steady rate (tasks/s)


def command(name: str, queue: str) -> list[str]:
    if name == "ours":
        return [sys.executable, str(ROOT / "listening_worker.py"), "--queue", queue,
                "--concurrency", "1", "--exit-when-idle", "2", "--seconds-per-dot",
                str(SECONDS_PER_DOT), "--name", "bench"]
    return [sys.executable, str(ROOT / "bench" / "peer_minimal.py"), "--queue", queue,
            "--slots", "1", "--seconds-per-dot", str(SECONDS_PER_DOT)]


def local_ports(pid: int) -> set[int]:
    """The local ports of *pid*'s TCP connections to port 5672 now."""
    listing = subprocess.run(["ss", "-tnpH", "dst", "127.0.0.1:5672"], capture_output=True,
                             text=True).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in listing.splitlines()
            if f"pid={pid}," in line}


def capture(name: str, tasks: int, dots: int, scratch: Path) -> list[tuple[float, str, int, int]]:
    """Fill a queue, run *name* on it under tcpdump; its packets: (time, "in"/"out", its
    local port, payload bytes)."""
    queue = f"bench.cycle.{uuid.uuid4().hex[:8]}.{name}"
    run_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=scratch))
    env = {**os.environ, "TASKQUEUE_LOG_DIR": str(run_dir / "logs")}
    texts = run_dir / "tasks.txt"
    texts.write_text("".join(f"task {n}{'.' * dots}\n" for n in range(tasks)))
    dump = run_dir / "packets.txt"
    try:
        fill(ROOT, queue, texts, env, run_dir)
        with open(dump, "w") as sink:
            # Payload-carrying packets only (IP length - IP header - TCP header > 0).
            sniffer = subprocess.Popen(
                ["tcpdump", "-i", "lo", "-tt", "-nn", "-l", "-q", "tcp port 5672 and "
                 "(((ip[2:2] - ((ip[0]&0xf)<<2)) - ((tcp[12]&0xf0)>>2)) != 0)"],
                stdout=sink, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.0)  # tcpdump listening
            ports: set[int] = set()
            with open(run_dir / "worker.out", "w") as out:
                worker = subprocess.Popen(command(name, queue), cwd=run_dir, env=env,
                                          stdout=out, stderr=subprocess.STDOUT)
            while worker.poll() is None:
                ports |= local_ports(worker.pid)
                time.sleep(0.2)
            if worker.returncode != 0:
                raise BenchError(f"{name} exited {worker.returncode}: "
                                 f"{tail(run_dir / 'worker.out')}")
        finally:
            time.sleep(0.3)
            sniffer.send_signal(signal.SIGINT)
            sniffer.wait(timeout=10)
        packets = []
        for line in dump.read_text().splitlines():
            match = PACKET.match(line)
            if not match:
                continue
            moment, source, target, size = float(match[1]), int(match[2]), int(match[3]), \
                int(match[4])
            if source == 5672 and target in ports:
                packets.append((moment, "in", target, size))
            elif target == 5672 and source in ports:
                packets.append((moment, "out", source, size))
        return packets
    finally:
        delete_all(queue)
        shutil.rmtree(run_dir, ignore_errors=True)


def cycles(packets: list[tuple[float, str, int, int]]) -> tuple[list[float], float]:
    """Each part's median over the run's cycles (s), and the steady rate (tasks/s)."""
    arriving = Counter(port for _t, way, port, size in packets if way == "in" and size > SMALL)
    if not arriving:
        raise BenchError("no delivery seen in the capture (tcpdump, or the ports?)")
    consuming = arriving.most_common(1)[0][0]  # the connection the tasks arrive on
    deliveries = [n for n, (_t, way, port, size) in enumerate(packets)
                  if way == "in" and port == consuming and size > SMALL]
    parts: list[list[float]] = [[] for _ in PARTS]
    for this, following in zip(deliveries, deliveries[1:]):
        between = packets[this + 1:following]
        record = next((p for p in between if p[1] == "out" and p[3] > SMALL), None)
        confirm = record and next((p for p in between if p[1] == "in" and p[2] == record[2]
                                   and p[0] >= record[0] and p[3] <= SMALL), None)
        ack = confirm and next((p for p in between if p[1] == "out" and p[2] == consuming
                                and p[0] >= confirm[0] and p[3] <= SMALL), None)
        if not (record and confirm and ack):
            continue  # not a task's cycle (e.g. the last one, or a heartbeat between)
        moments = (packets[this][0], record[0], confirm[0], ack[0], packets[following][0])
        for n in range(len(PARTS)):
            parts[n].append(moments[n + 1] - moments[n])
    if not parts[0]:
        raise BenchError("no whole cycle seen in the capture")
    times = [packets[n][0] for n in deliveries]
    low, high = len(times) // 20, len(times) - 1 - len(times) // 20
    return [statistics.median(part) for part in parts], (high - low) / (times[high] - times[low])


def render(contenders: list[Contender], tasks: int, dots: int, repeat: int) -> str:
    ours, minimal = contenders
    kind = "zero-work" if dots == 0 else f"{dots * SECONDS_PER_DOT * 1000:g} ms"
    lines = [f"# One task's cycle at 1 slot: ours and the minimal loop ({kind} tasks)", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores; {tasks} "
             f"tasks a run, {repeat} alternating run(s) each; `bench/cycle.py` says how. "
             "Each part: the median of a run's cycles (us), then the median over the runs.",
             "", "| part | ours | minimal loop | ours - minimal |", "|---|---:|---:|---:|"]
    medians = {c.name: [statistics.median(run[n] for run in c.parts) * 1e6
                        for n in range(len(PARTS))] for c in contenders}
    for n, part in enumerate(PARTS):
        who = "worker" if n in WORKER_PARTS else "broker"
        lines.append(f"| {part} ({who}) | {medians['ours'][n]:,.0f} | "
                     f"{medians['minimal'][n]:,.0f} | "
                     f"{medians['ours'][n] - medians['minimal'][n]:+,.0f} |")
    whole = {name: sum(values) for name, values in medians.items()}
    lines += [f"| the cycle | {whole['ours']:,.0f} | {whole['minimal']:,.0f} | "
              f"{whole['ours'] - whole['minimal']:+,.0f} |", "",
              f"Cycle ratio (minimal / ours): {whole['minimal'] / whole['ours']:.2f}x. "
              "Steady rate, tasks/s, every run (deliveries 5%..95% of the run):", "",
              f"- ours ({ours.describe}): " + ", ".join(f"{r:,.0f}" for r in ours.rates),
              f"- minimal loop ({minimal.describe}): "
              + ", ".join(f"{r:,.0f}" for r in minimal.rates),
              "- median ratio: "
              f"{statistics.median(ours.rates) / statistics.median(minimal.rates):.2f}x"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, help="tasks a run (default 3000; --dots: 300)")
    parser.add_argument("--dots", type=int, default=0, help="dots a task (10 ms each)")
    parser.add_argument("--repeat", type=int, default=3, help="runs each (alternating)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "cycle.md")
    args = parser.parse_args()
    tasks = args.tasks or (300 if args.dots else 3000)
    if os.geteuid() != 0 or shutil.which("tcpdump") is None or shutil.which("ss") is None:
        print("cycle: needs root and tcpdump (apt-get install tcpdump) and ss", file=sys.stderr)
        return 1
    contenders = [Contender("ours", "listening_worker.py --concurrency 1"),
                  Contender("minimal", "bench/peer_minimal.py --slots 1")]
    with tempfile.TemporaryDirectory(prefix="bench-cycle-") as directory:
        try:
            for run in range(args.repeat):
                for contender in contenders if run % 2 == 0 else contenders[::-1]:
                    parts, rate = cycles(capture(contender.name, tasks, args.dots,
                                                 Path(directory)))
                    contender.parts.append(parts)
                    contender.rates.append(rate)
                    print(f"  {contender.name:8} run {run + 1}: {rate:,.0f} tasks/s, parts "
                          + " / ".join(f"{p * 1e6:,.0f}" for p in parts) + " us", flush=True)
        except BenchError as error:
            print(f"cycle: the benchmark could not run: {error}", file=sys.stderr)
            return 1
    text = render(contenders, tasks, args.dots, args.repeat)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
