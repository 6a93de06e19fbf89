"""The run registry under concurrent writers: N processes each record a run and write W heartbeats at once.

    python scripts/bench_registry.py                 # N = 16 processes, W = 50 writes each
    python scripts/bench_registry.py --processes 32 --writes 100

Every write is what a working run does (distill.runs.RunRecord): the manifest replaced under its lock,
then one SQLite transaction on $DISTILL_HOME/runs.sqlite (WAL). Printed: writes per second over all
processes, the slowest single write, and whether every run ended in the registry with its last write —
the figure that matters is 0 lost or failed writes; the latency says how long a heartbeat can stall a step.
The baseline in the same run is one process alone (its write latency without contention).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def writer(root: str, index: int, writes: int, start: float) -> tuple[float, float, list[float]]:
    """One run: start, `writes` heartbeats forced to disk, finish; (first start, last end, each write's seconds)."""
    from distill.configs import EvalConfig
    from distill.runs import RunRecord

    while time.time() < start:  # every process begins together
        time.sleep(0.001)
    record = RunRecord("eval", Path(root) / f"run-{index}" / "run.json", EvalConfig(model="m", prompts="p"))
    first = time.time()
    record.start()
    seconds = []
    for step in range(writes):
        record.manifest.metrics = {"step": step}
        t = time.perf_counter()
        record._write()  # a heartbeat without the 30 s throttle
        seconds.append(time.perf_counter() - t)
    record.finish({"step": writes})
    return first, time.time(), seconds


def measure(processes: int, writes: int) -> tuple[float, float, float, int]:
    """(writes/s over all processes, median write s, slowest write s, runs recorded with their final write)."""
    from distill.runs import Registry

    with tempfile.TemporaryDirectory() as root:
        os.environ["DISTILL_HOME"] = str(Path(root) / "home")
        start = time.time() + 3.0  # after every spawned process has imported distill
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            results = pool.starmap(writer, [(root, i, writes, start) for i in range(processes)])
        runs = Registry().runs()
        complete = sum(m.status == "finished" and m.metrics == {"step": writes} for m, _ in runs)
        span = max(r[1] for r in results) - min(r[0] for r in results)
        every = [s for r in results for s in r[2]]
        return processes * (writes + 2) / span, statistics.median(every), max(every), complete


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--writes", type=int, default=50)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    alone = measure(1, args.writes)
    many = measure(args.processes, args.writes)
    print(f"{'':<24}{'writes/s':>10}{'median ms':>11}{'max ms':>9}{'complete':>10}")
    for label, (rate, median, worst, complete) in (("1 process", alone), (f"{args.processes} processes", many)):
        print(f"{label:<24}{rate:>10.0f}{1e3 * median:>11.1f}{1e3 * worst:>9.1f}{complete:>10}")
    print(f"median write under contention / alone: {many[1] / alone[1]:.1f}×; lost runs: {args.processes - many[3]}")


if __name__ == "__main__":
    main()
