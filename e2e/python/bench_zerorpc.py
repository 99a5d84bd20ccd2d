"""zerorpc-python as a benchmark client: N sequential calls of add(1, 2) against ENDPOINT.

    python bench_zerorpc.py ENDPOINT N PREFIX

prints `PREFIX_calls_per_sec`, `PREFIX_p50_ms` and `PREFIX_p99_ms` lines.
"""

import sys
import time

import zerorpc


def main(endpoint, n, prefix):
    c = zerorpc.Client(endpoint, timeout=30)
    for _ in range(50):  # warm-up: connect, first calls
        c.add(1, 2)
    latencies = []
    started = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        c.add(1, 2)
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - started
    latencies.sort()
    print(f"{prefix}_calls_per_sec {n / elapsed:.1f}")
    print(f"{prefix}_p50_ms {latencies[len(latencies) // 2] * 1000:.3f}")
    print(f"{prefix}_p99_ms {latencies[int(len(latencies) * 0.99)] * 1000:.3f}")
    c.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
