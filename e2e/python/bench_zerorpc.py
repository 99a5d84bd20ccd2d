"""zerorpc-python as a benchmark client against ENDPOINT.

    python bench_zerorpc.py ENDPOINT N PREFIX [--method add] [--token T] [--concurrency C]
    python bench_zerorpc.py ENDPOINT N PREFIX --stream

N calls of METHOD(1, 2) (through the gateway, METHOD is service.method and the token rides in
the event header), from C greenlets sharing one client (C = 1: one call at a time); prints
`PREFIX_calls_per_sec`, and `PREFIX_p50_ms` / `PREFIX_p99_ms` when sequential. With --stream:
one N-item stream of count(N); prints `PREFIX_items_per_sec`.
"""

import argparse
import time

import gevent
import zerorpc


class Token:
    def __init__(self, token):
        self.token = token

    def client_before_request(self, event):
        event.header["authorization"] = "Bearer " + self.token


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("n", type=int)
    parser.add_argument("prefix")
    parser.add_argument("--method", default="add")
    parser.add_argument("--token")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--stream", action="store_true")
    a = parser.parse_args()
    context = zerorpc.Context()
    if a.token:
        context.register_middleware(Token(a.token))
    c = zerorpc.Client(a.endpoint, context=context, timeout=60)
    call = lambda: c(a.method, 1, 2)  # noqa: E731
    for _ in range(50):  # warm-up: connect, first calls
        call()
    if a.stream:
        started = time.perf_counter()
        items = sum(1 for _ in c.count(a.n))
        print(f"{a.prefix}_items_per_sec {items / (time.perf_counter() - started):.1f}")
        return
    latencies = []

    def worker(calls):
        for _ in range(calls):
            t = time.perf_counter()
            call()
            latencies.append(time.perf_counter() - t)

    per = a.n // a.concurrency
    started = time.perf_counter()
    gevent.joinall([gevent.spawn(worker, per) for _ in range(a.concurrency)], raise_error=True)
    elapsed = time.perf_counter() - started
    print(f"{a.prefix}_calls_per_sec {per * a.concurrency / elapsed:.1f}")
    if a.concurrency == 1:
        latencies.sort()
        print(f"{a.prefix}_p50_ms {latencies[len(latencies) // 2] * 1000:.3f}")
        print(f"{a.prefix}_p99_ms {latencies[int(len(latencies) * 0.99)] * 1000:.3f}")
    c.close()


if __name__ == "__main__":
    main()
