"""A real Celery application, the peer of quartet-task-gateway in the interoperability tests.

Tasks are named peers.<function> (this module's name), as in the captured fixtures.

    BROKER_URL=redis://... RESULT_URL=redis://... python -m celery -A peers worker --pool=solo -Q q
    BROKER_URL=... RESULT_URL=... python peers.py submit TASK_NAME ARGS_JSON QUEUE [TIMEOUT]
    BROKER_URL=... RESULT_URL=... python peers.py chain CELERY_QUEUE RUST_QUEUE [TIMEOUT]

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


if __name__ == "__main__":
    if sys.argv[1] == "chain":
        chain_across(sys.argv[2], sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else 30)
    elif sys.argv[1] == "submit":
        timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 30
        submit(sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], timeout)
    else:
        sys.exit(f"unknown command {sys.argv[1]!r}")
