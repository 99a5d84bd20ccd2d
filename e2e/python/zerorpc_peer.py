"""zerorpc-python 0.6.3, the peer of quartet-rpc-gateway's zerorpc library in the interop tests.

    python zerorpc_peer.py client ENDPOINT
        calls a Rust server's add, fail, count (a 250-item stream), slow, an unknown method and
        the _zerorpc_* built-ins with a real zerorpc.Client (1 s heartbeats), and prints what
        came back as JSON.
    python zerorpc_peer.py gateway ENDPOINT TOKEN
        calls demo.add, demo.count and demo.fail through quartet-rpc-gateway's zerorpc front
        with the token in the event header (a client middleware), and once without a token.
    python zerorpc_peer.py curve ENDPOINT TOKEN SERVER_PUBLIC PUBLIC SECRET
        calls demo.add through a CURVE-secured gateway front (Z85 keys) with the token.
    python zerorpc_peer.py push ENDPOINT N
        pushes record(i, "py") for i below N with a zerorpc.Pusher.
    python zerorpc_peer.py pull|subscribe ENDPOINT N
        a zerorpc.Puller bound (or Subscriber connected) at ENDPOINT; prints "ready", then the
        first N record/tick events as JSON [[i, tag], ...].
    python zerorpc_peer.py publish ENDPOINT
        a zerorpc.Publisher bound at ENDPOINT; prints "ready", then publishes tick(i) every 20 ms.
    python zerorpc_peer.py server ENDPOINT
        serves Demo (add, fail, count and ticks as streams, pid, slow) with a real zerorpc.Server
        (1 s heartbeats); prints "ready" once bound.
"""

import json
import os
import sys
import time

import zerorpc


def client(endpoint):
    c = zerorpc.Client(endpoint, heartbeat=1, timeout=15)
    out = {"add": c.add(1, 2)}
    try:
        c.fail("boom")
    except zerorpc.RemoteError as e:
        out["error"] = [e.name, e.msg, e.traceback]
    out["stream"] = list(c.count(250))
    out["inspect"] = c._zerorpc_inspect()
    out["list"] = c._zerorpc_list()
    out["name"] = c._zerorpc_name()
    out["ping"] = c._zerorpc_ping()
    started = time.time()
    out["slow"] = c.slow(3.5)
    out["slow_seconds"] = time.time() - started
    try:
        c.nosuch()
    except zerorpc.RemoteError as e:
        out["unknown"] = [e.name, e.msg]
    c.close()
    print(json.dumps(out))


class Token:
    """Client middleware: the caller's token in every request's header."""

    def __init__(self, token):
        self.token = token

    def client_before_request(self, event):
        event.header["authorization"] = "Bearer " + self.token


def through_gateway(endpoint, token):
    context = zerorpc.Context()
    context.register_middleware(Token(token))
    c = zerorpc.Client(endpoint, context=context, heartbeat=1, timeout=15)
    out = {"add": c("demo.add", 1, 2), "count": list(c("demo.count", 3))}
    try:
        c("demo.fail", "boom")
    except zerorpc.RemoteError as e:
        out["error"] = [e.name, e.msg]
    anonymous = zerorpc.Client(endpoint, heartbeat=1, timeout=15)
    try:
        anonymous("demo.add", 1, 2)
    except zerorpc.RemoteError as e:
        out["anonymous"] = [e.name, e.msg]
    print(json.dumps(out))


def over_curve(endpoint, token, server_public, public, secret):
    """demo.add through a CURVE-secured gateway front: zerorpc has no CURVE option, so the
    keys go on its underlying pyzmq socket before it connects."""
    context = zerorpc.Context()
    context.register_middleware(Token(token))
    c = zerorpc.Client(context=context, heartbeat=1, timeout=15)
    sock = c._events._socket
    sock.curve_serverkey = server_public.encode()
    sock.curve_publickey = public.encode()
    sock.curve_secretkey = secret.encode()
    c.connect(endpoint)
    print(json.dumps({"add": c("demo.add", 1, 2)}))


def push(endpoint, n):
    """Pushes record(i, "py") for i below n to a puller."""
    import gevent
    p = zerorpc.Pusher()
    p.connect(endpoint)
    for i in range(n):
        p.record(i, "py")
    gevent.sleep(0.5)  # let the socket drain before exit
    p.close()


class Collector:
    """One-way methods for the pull and subscribe commands: events kept until n arrive."""

    def __init__(self, n):
        import gevent.event
        self.n = n
        self.got = []
        self.done = gevent.event.Event()

    def record(self, i, tag):
        self.got.append([i, tag])
        if len(self.got) >= self.n:
            self.done.set()

    def tick(self, i):
        self.record(i, "tick")


def receive(kind, endpoint, n):
    """A Puller (bound) or a Subscriber (connected) until n events; prints them as JSON."""
    import gevent
    collector = Collector(n)
    if kind == "pull":
        r = zerorpc.Puller(collector)
        r.bind(endpoint)
    else:
        r = zerorpc.Subscriber(collector)
        r.connect(endpoint)
    print("ready", flush=True)
    gevent.spawn(r.run)
    collector.done.wait(timeout=30)
    print(json.dumps(collector.got), flush=True)


def publish(endpoint):
    """Publishes tick(i) every 20 ms, for ever."""
    import gevent
    p = zerorpc.Publisher()
    p.bind(endpoint)
    print("ready", flush=True)
    i = 0
    while True:
        p.tick(i)
        i += 1
        gevent.sleep(0.02)


class Demo:
    """A service for the Rust client."""

    def add(self, a, b):
        """Adds two numbers."""
        return a + b

    def fail(self, message):
        raise ValueError(message)

    @zerorpc.stream
    def count(self, n):
        return iter(range(n))

    def traceparent(self):
        """The traceparent the caller's request carried, if any."""
        return LAST_HEADER.get("traceparent")

    @zerorpc.stream
    def ticks(self, n, interval):
        """Streams [pid, i] for i below n, one every interval seconds."""
        import gevent
        for i in range(n):
            yield [os.getpid(), i]
            gevent.sleep(interval)

    def pid(self, seconds=0):
        """This server's process id, after sleeping seconds."""
        import gevent
        gevent.sleep(seconds)
        return os.getpid()

    def slow(self, seconds):
        import gevent
        gevent.sleep(seconds)
        return "done"


LAST_HEADER = {}


class Headers:
    """Server middleware: keeps the last request's header for Demo.traceparent."""

    def server_before_exec(self, request_event):
        LAST_HEADER.clear()
        LAST_HEADER.update(request_event.header)


def server(endpoint):
    context = zerorpc.Context()
    context.register_middleware(Headers())
    s = zerorpc.Server(Demo(), heartbeat=1, context=context)
    s.bind(endpoint)
    print("ready", flush=True)
    s.run()


if __name__ == "__main__":
    if sys.argv[1] == "client":
        client(sys.argv[2])
    elif sys.argv[1] == "gateway":
        through_gateway(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "push":
        push(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] in ("pull", "subscribe"):
        receive(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "publish":
        publish(sys.argv[2])
    elif sys.argv[1] == "curve":
        over_curve(*sys.argv[2:7])
    elif sys.argv[1] == "server":
        server(sys.argv[2])
    else:
        sys.exit(f"unknown command {sys.argv[1]!r}")
