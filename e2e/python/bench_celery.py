"""Celery's side of `scripts/bench.sh tasks`: the same measurements as the gateway's
examples/bench_tasks.rs, with Celery's own client and a Celery worker (started by the
script) on the same Redis. Prints `name value` lines.

    BROKER_URL=redis://.../4 RESULT_URL=redis://.../5 python bench_celery.py N ROUND_TRIPS QUEUE
"""

import os
import subprocess
import sys
import time

from peers import app

n, round_trips, queue = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
concurrency = os.environ.get("CELERY_CONCURRENCY", "8")

# Publish rate, no worker running.
started = time.perf_counter()
results = [app.send_task("peers.add", args=(i, 1), queue=queue) for i in range(n)]
publish = time.perf_counter() - started
print(f"celery_publish_per_sec {n / publish:.0f}")

# End-to-end: a Celery worker (prefork) drains the queue.
worker = subprocess.Popen(
    [sys.executable, "-m", "celery", "-A", "peers", "worker", "-Q", queue,
     f"--concurrency={concurrency}", "--without-mingle", "--without-gossip", "--loglevel=error"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
try:
    # Timed from the first result, so the worker's start-up is not counted.
    results[0].get(timeout=120)
    started = time.perf_counter()
    for r in results[1:]:
        r.get(timeout=600)
    drained = time.perf_counter() - started
    print(f"celery_end_to_end_per_sec {(n - 1) / drained:.0f}")

    latencies = []
    for i in range(round_trips):
        t = time.perf_counter()
        app.send_task("peers.add", args=(i, 1), queue=queue).get(timeout=10)
        latencies.append(time.perf_counter() - t)
    latencies.sort()
    pct = lambda p: latencies[min(int(len(latencies) * p), len(latencies) - 1)]
    print(f"celery_round_trip_p50_ms {pct(0.50) * 1000:.2f}")
    print(f"celery_round_trip_p99_ms {pct(0.99) * 1000:.2f}")
finally:
    worker.terminate()
    worker.wait(timeout=30)
