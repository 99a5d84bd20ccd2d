"""Time from killing a quartet-db group's leader to the first acknowledged write after it.

Usage: db_failover.py USER PASSWORD DATABASE NODE...   where NODE is mysql_port:admin_port:pid

A client writes continuously (PyMySQL, autocommit), following not-leader errors to the
leader they name and moving on from dead nodes. After two seconds of writes the leader
(found from each node's /metrics) is sent SIGKILL; the figure is the time from the kill to
the first write acknowledged afterwards. Prints `failover_ms <n> killed_pid <pid>`.
"""

import os
import re
import signal
import sys
import time
import urllib.request

import pymysql

user, password, database = sys.argv[1:4]
nodes = [tuple(int(x) for x in n.split(":")) for n in sys.argv[4:]]


def leader():
    for mysql_port, admin_port, pid in nodes:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=0.5).read().decode()
        except OSError:
            continue
        if "\nquartet_db_raft_is_leader 1\n" in body:
            return mysql_port, pid
    return None


def connect(port):
    return pymysql.connect(host="127.0.0.1", port=port, user=user, password=password,
                           database=database, autocommit=True, connect_timeout=1,
                           read_timeout=2, write_timeout=2)


deadline = time.time() + 20
found = None
while found is None and time.time() < deadline:
    found = leader()
    time.sleep(0.05)
if found is None:
    sys.exit("no leader")
port, pid = found
conn = connect(port)
conn.cursor().execute("CREATE TABLE IF NOT EXISTS failover (id BIGINT PRIMARY KEY)")
ports = [n[0] for n in nodes]
n = int(time.time() * 1000) * 1000
killed_at = None
started = time.time()
while True:
    n += 1
    if killed_at is None and time.time() - started > 2:
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
    try:
        conn.cursor().execute("INSERT INTO failover (id) VALUES (%s)", (n,))
        if killed_at is not None:
            print(f"failover_ms {(time.monotonic() - killed_at) * 1000:.0f} killed_pid {pid}")
            break
    except pymysql.err.OperationalError as e:
        code = e.args[0]
        hint = re.search(r"\(mysql 127\.0\.0\.1:(\d+)\)", str(e.args[1]) if len(e.args) > 1 else "")
        if code == 1290 and hint:
            port = int(hint.group(1))
        elif code == 1290:
            time.sleep(0.02)
        else:
            port = ports[(ports.index(port) + 1) % len(ports)]
        try:
            conn = connect(port)
        except pymysql.err.OperationalError:
            port = ports[(ports.index(port) + 1) % len(ports)]
            time.sleep(0.02)
    except pymysql.err.InterfaceError:
        port = ports[(ports.index(port) + 1) % len(ports)]
        try:
            conn = connect(port)
        except pymysql.err.OperationalError:
            time.sleep(0.02)
    if killed_at is not None and time.monotonic() - killed_at > 30:
        sys.exit("writes did not resume within 30 s")
