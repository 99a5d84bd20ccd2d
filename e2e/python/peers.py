"""A real Celery application, the peer of quartet-task-gateway in the interoperability tests.

Tasks are named peers.<function> (this module's name), as in the captured fixtures.

    BROKER_URL=redis://... RESULT_URL=redis://... python -m celery -A peers worker --pool=solo -Q q
    BROKER_URL=... RESULT_URL=... python peers.py submit TASK_NAME ARGS_JSON QUEUE [TIMEOUT]
    BROKER_URL=... RESULT_URL=... python peers.py chain CELERY_QUEUE RUST_QUEUE [TIMEOUT]
    BROKER_URL=... RESULT_URL=... python peers.py chord RUST_QUEUE CELERY_QUEUE [TIMEOUT]
    BROKER_URL=... RESULT_URL=... python peers.py events RUST_QUEUE [TIMEOUT]
    BROKER_URL=... RESULT_URL=... python peers.py revoke TASK_ID [terminate]
    BROKER_URL=... RESULT_URL=... python peers.py priorities RUST_QUEUE

`submit` publishes with Celery's own client (send_task) and prints
{"id": ..., "state": ..., "result": ...} once AsyncResult.get() returns.
"""

import json
import os
import sys

from celery import Celery

app = Celery("peers", broker=os.environ["BROKER_URL"], backend=os.environ["RESULT_URL"])
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task
def add(x, y):
    return x + y


@app.task
def mul(x, y):
    return x * y


@app.task
def fail(message):
    raise ValueError(message)


@app.task
def tsum(numbers):
    return sum(numbers)


def submit(name, args, queue, timeout):
    result = app.send_task(name, args=args, queue=queue)
    try:
        value = result.get(timeout=timeout)
        out = {"id": result.id, "state": result.state, "result": value}
    except Exception as e:  # the remote failure, as Celery reports it
        out = {"id": result.id, "state": result.state, "error": type(e).__name__, "message": str(e)}
    print(json.dumps(out))


def chain_across(celery_queue, rust_queue, timeout):
    """peers.add(2, 3) on a Celery worker, then rust.add(<that>, 10) on a Rust worker."""
    from celery import chain
    flow = chain(
        app.signature("peers.add", args=(2, 3), queue=celery_queue),
        app.signature("rust.add", args=(10,), queue=rust_queue),
    )
    result = flow.apply_async()
    print(json.dumps({"id": result.id, "result": result.get(timeout=timeout)}))


def chord_across(rust_queue, celery_queue, timeout):
    """A chord from Celery's client: three rust.add parts on a Rust worker, the body
    peers.tsum on a Celery worker; .get() returns the sum."""
    from celery import chord
    header = [app.signature("rust.add", args=(i, i), queue=rust_queue) for i in (1, 2, 3)]
    result = chord(header)(app.signature("peers.tsum", queue=celery_queue))
    print(json.dumps({"id": result.id, "result": result.get(timeout=timeout)}))


def follow_events(rust_queue, timeout):
    """Follows Celery's events with Celery's own receiver: once a Rust worker's heartbeat
    arrives, sends it rust.add(1, 2) and collects that task's events until it succeeds."""
    import time
    seen = {"heartbeat": None, "task": [], "id": None}
    deadline = time.monotonic() + timeout

    def on_event(event):
        kind = event["type"]
        if kind == "worker-heartbeat" and event["hostname"].startswith("quartet-worker"):
            if seen["id"] is None:
                seen["heartbeat"] = event
                seen["id"] = app.send_task("rust.add", args=(1, 2), queue=rust_queue).id
        elif kind.startswith("task-") and event.get("uuid") == seen["id"]:
            seen["task"].append(event)
        if time.monotonic() > deadline or kind == "task-succeeded" and event.get("uuid") == seen["id"]:
            raise KeyboardInterrupt

    with app.connection() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": on_event})
        try:
            receiver.capture(limit=None, timeout=timeout, wakeup=False)
        except (KeyboardInterrupt, TimeoutError, OSError):
            pass
    print(json.dumps({"heartbeat": seen["heartbeat"], "events": seen["task"], "id": seen["id"]}))


if __name__ == "__main__":
    if sys.argv[1] == "chain":
        chain_across(sys.argv[2], sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else 30)
    elif sys.argv[1] == "chord":
        chord_across(sys.argv[2], sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else 30)
    elif sys.argv[1] == "events":
        follow_events(sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 30)
    elif sys.argv[1] == "priorities":
        # Three rust.add at priority 9, then three at 0, with nobody consuming yet.
        queue = sys.argv[2]
        low = [app.send_task("rust.add", args=(1, 1), queue=queue, priority=9).id for _ in range(3)]
        high = [app.send_task("rust.add", args=(1, 1), queue=queue, priority=0).id for _ in range(3)]
        print(json.dumps({"low": low, "high": high}))
    elif sys.argv[1] == "revoke":
        app.control.revoke(sys.argv[2], terminate=len(sys.argv) > 3 and sys.argv[3] == "terminate")
        print(json.dumps({"revoked": sys.argv[2]}))
    elif sys.argv[1] == "submit":
        timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 30
        submit(sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], timeout)
    else:
        sys.exit(f"unknown command {sys.argv[1]!r}")
