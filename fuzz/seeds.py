#!/usr/bin/env python3
"""Writes the committed seed corpora, fuzz/corpus/<target>/, from the project's fixtures and
test inputs: the zerorpc and Celery captures, SQL statements of quartet-db's tests, MySQL
packets as real clients send them, the permission, INI and token inputs of the unit tests,
and each service's configuration as `--print-config` prints it.

    python3 fuzz/seeds.py [--bin DIR]     (DIR: where the debug service binaries are,
                                           default $CARGO_TARGET_DIR/debug; without them the
                                           config seeds are left as they are)

Run it again when fixtures change; it replaces only the seeds it writes (named seed-*).
"""

import hashlib
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def write(target, items):
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("seed-*"):
        old.unlink()
    seen = set()
    for item in items:
        data = item.encode() if isinstance(item, str) else bytes(item)
        digest = hashlib.sha1(data).hexdigest()[:12]
        if digest in seen:
            continue
        seen.add(digest)
        (folder / f"seed-{digest}").write_bytes(data)
    print(f"{target}: {len(seen)} seeds", file=sys.stderr)


def fixtures(kind):
    """The JSON captures of one protocol, from the services' test fixtures."""
    folder = ROOT / "services" / {"zerorpc": "rpc-gateway", "celery": "task-gateway"}[kind]
    return sorted((folder / "tests" / "fixtures" / kind).glob("*.json"))


# --- MySQL -------------------------------------------------------------------------------

PROTOCOL_41, CONNECT_WITH_DB, SECURE, PLUGIN_AUTH, LENENC = 0x200, 0x8, 0x8000, 0x80000, 0x200000
CONNECT_ATTRS, MULTI_STATEMENTS = 0x100000, 0x10000


def handshake(caps, user=b"app", auth=b"\x01" * 20, db=b"shop", plugin=b"mysql_native_password"):
    out = struct.pack("<IIB", caps, 1 << 24, 45) + b"\0" * 23 + user + b"\0"
    out += bytes([len(auth)]) + auth  # a one-byte length is also a length-encoded one
    if caps & CONNECT_WITH_DB:
        out += db + b"\0"
    if caps & PLUGIN_AUTH:
        out += plugin + b"\0"
    if caps & CONNECT_ATTRS:
        attrs = b"".join(bytes([len(k)]) + k + bytes([len(v)]) + v
                         for k, v in [(b"_client_name", b"libmariadb"), (b"_os", b"Linux")])
        out += bytes([len(attrs)]) + attrs
    return out


def packet(seq, payload):
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload


def execute(statement, types, values, send_types=True):
    """COM_STMT_EXECUTE: id, flags, iterations, NULL bitmap, new-params flag, types, values."""
    out = b"\x17" + struct.pack("<IBI", statement, 0, 1)
    nulls = sum(1 << i for i, v in enumerate(values) if v is None)
    out += nulls.to_bytes((len(types) + 7) // 8, "little") + bytes([int(send_types)])
    if send_types:
        out += b"".join(bytes([t, 0]) for t in types)
    return out + b"".join(v for v in values if v is not None)


def mysql_seeds():
    base = PROTOCOL_41 | SECURE | PLUGIN_AUTH
    handshakes = [
        handshake(base),
        handshake(base | CONNECT_WITH_DB | LENENC | CONNECT_ATTRS | MULTI_STATEMENTS),
        handshake(base | CONNECT_WITH_DB, plugin=b"caching_sha2_password", auth=b"\x02" * 32),
        handshake(base, auth=b""),
        handshake(PROTOCOL_41 | SECURE, user=b"root"),
    ]
    params = [
        # setup byte: limit 1 << (b % 24), b >> 3 parameters, bit 7 restarts the sequence
        (3 << 3) | 16,
        (5 << 3) | 20,
        0x80 | (2 << 3) | 22,
    ]
    datetime = bytes([11]) + struct.pack("<HBBBBBI", 2024, 2, 29, 13, 14, 15, 123456)
    streams = [
        bytes([params[0]]) + packet(0, execute(1, [0x08, 0x06, 0xFD],
                                               [struct.pack("<q", 7), None, b"\x02hi"])),
        bytes([params[1]]) + packet(0, execute(2, [0x01, 0x02, 0x03, 0x05, 0x0C],
                                               [b"\x7f", b"\xff\x7f", struct.pack("<i", -1),
                                                struct.pack("<d", 1.5), datetime])),
        bytes([params[2]]) + packet(0, b"\x03SELECT 1") + packet(0, execute(3, [0xFC, 0x0A],
                                                                            [b"\xfc\x00\x01" + b"x" * 256, b"\x04\xe8\x07\x01\x02"]))
        + packet(0, execute(3, [], [b"\x00", b"\x00"], send_types=False)) + packet(0, b"\x19\x03\0\0\0")
        + packet(0, b"\x1b\x00\x00") + packet(0, b"\x0e") + packet(0, b"\x01"),
        bytes([16]) + b"\xff\xff\xff\x00" + b"\x03SELECT",  # announces 16 MB, limit 64 KB
        bytes([params[0]]) + packet(1, b"\x0e"),
    ]
    return handshakes, streams


def sql_seeds():
    statements = set()
    sources = list((ROOT / "services" / "db" / "src").glob("*.rs")) + \
        list((ROOT / "services" / "db" / "tests").glob("*.rs"))
    keyword = re.compile(r'^(SELECT|INSERT|CREATE|UPDATE|DELETE|SHOW|SET|WITH|ALTER|DROP|USE|BEGIN|'
                         r'START|COMMIT|ROLLBACK|KILL|REPLACE|DESCRIBE|EXPLAIN)\b', re.I)
    for path in sources:
        text = path.read_text()
        for literal in re.findall(r'"((?:[^"\\\n]|\\.)*)"', text):
            sql = literal.encode().decode("unicode_escape", errors="ignore")
            if keyword.match(sql) and "{" not in sql and len(sql) < 2000:
                statements.add(sql)
        for literal in re.findall(r'r#"(.*?)"#', text, re.S):
            if keyword.match(literal.strip()) and "{" not in literal:
                statements.add(literal.strip())
    session = [
        "CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(20) NOT NULL DEFAULT 'x', "
        "n BIGINT, KEY kv (v)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4; "
        "INSERT INTO t (v, n) VALUES ('a', 1), (\"b\", 2) ON DUPLICATE KEY UPDATE n = VALUES(n); "
        "UPDATE t SET n = n + 1 WHERE v = \"a\"; SELECT id, v, n FROM t ORDER BY id LIMIT 10; "
        "DELETE FROM t WHERE n > 2",
        "CREATE DATABASE IF NOT EXISTS other; USE other; SHOW TABLES; SHOW DATABASES",
        "SELECT @@version, @@session.sql_mode, DATABASE(), LAST_INSERT_ID(), CONNECTION_ID()",
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'fuzz'",
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c) SELECT COUNT(*) FROM c",
        "SET NAMES utf8mb4, autocommit = 1, @@session.sql_mode = 'ANSI_QUOTES'",
        "INSERT IGNORE INTO t (v) VALUES ('z'); SHOW COLUMNS FROM t; SHOW CREATE TABLE t",
        "SELECT " + "+".join(["1"] * 1100),
        "SELECT " + "(" * 1100 + "1" + ")" * 1100,
        "SELECT " + " || ".join(["'a'"] * 700),
    ]
    return sorted(statements) + session


def zerorpc_seeds():
    events = []
    for path in fixtures("zerorpc"):
        doc = json.loads(path.read_text())
        data = doc.get("data")
        records = data if isinstance(data, list) else (data or {}).get("frames", [])
        for record in records:
            frames = record.get("frames_hex") or []
            if frames and frames[-1]:
                events.append(bytes.fromhex(frames[-1]))
    # nesting at and past the limit, as in issue 14
    events.append(b"\x93\x81\xaamessage_id\xc4\x201000000000000000aaaabbbbccccdddd\xa3add"
                  + b"\x91" * 99 + b"\xc0")
    events.append(b"\x93" + b"\x91" * 200 + b"\xc0")
    return events


def celery_seeds():
    messages = []
    for path in fixtures("celery"):
        doc = json.loads(path.read_text())
        for entry in doc.get("data", []):
            values = entry.get("value") if isinstance(entry, dict) else None
            if isinstance(values, list):
                messages += [v for v in values if isinstance(v, str) and v.startswith('{"body"')]
    messages += ['[1e999999]', '["\\ud800"]', '[' * 70 + ']' * 70, '[123456789012345678901234567890]',
                 '{"a": [1, 2.5, "x", null, true]}']
    return messages


def permission_seeds():
    return ["task:submit:q1\ntask:submit:*\n*", "a:b,c:d\na:b\na", "doc:read,list\ndoc:*:x\ndoc",
            "*:*:*\n:a\na::b", "A:B\na:b\na:b:c,d", "q1:*\nq1\nq1:anything", " a , b :c\nb:c\n,"]


def ini_seeds():
    seeds = ["""[users]
ada = $argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA, admin, reader
bob = secret, reader
[roles]
admin = *
reader = "doc:read,list", report:view
[urls]
/admin/** = authc, roles[admin]
/docs/* = authc, perms["doc:read"]
/** = anon
""", "[main]\nsecurityManager.realms = $realm\n", "ada = x\n[users]\n[nope]\n"]
    text = (ROOT / "services" / "auth" / "src" / "ini.rs").read_text()
    for literal in re.findall(r'r#"(.*?)"#', text, re.S):
        if "[users]" in literal:
            seeds.append(literal)
    for literal in re.findall(r'"((?:[^"\\\n]|\\.)*)"', text):
        if "\\n[" in literal:
            seeds.append(literal.encode().decode("unicode_escape", errors="ignore"))
    return seeds


def jwt_seeds():
    claims = {"iss": "https://auth.fuzz", "sub": "ada", "aud": "quartet", "exp": 4102444800,
              "iat": 0, "nbf": 0, "jti": "j1", "client_id": "cli", "scope": "openid",
              "roles": ["ops"], "perms": ["task:submit:*", "rpc:call:reports.render"]}
    other = dict(claims, iss="https://elsewhere", perms=["*", ":", ""], exp=1)
    return [json.dumps(claims), json.dumps(other), json.dumps({"sub": "x"}),
            "Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0.",
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ4In0.c2ln",
            "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
            "bearer  eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.e30.AAAA", "not a token"]


def config_seeds(bin_dir):
    seeds = []
    for i, service in enumerate(["auth", "task-gateway", "rpc-gateway", "db"]):
        binary = bin_dir / f"quartet-{service}"
        if not binary.exists():
            return None
        printed = subprocess.run([str(binary), "--print-config"], check=True, capture_output=True,
                                 env={"PATH": os.environ.get("PATH", "")}).stdout
        seeds.append(bytes([i]) + printed)
        seeds.append(bytes([i]) + b"[nope]\nx = 1\n")
    return seeds


def main():
    bin_dir = Path(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/quartet/target")) / "debug"
    if "--bin" in sys.argv:
        bin_dir = Path(sys.argv[sys.argv.index("--bin") + 1])
    handshakes, streams = mysql_seeds()
    write("mysql_handshake", handshakes)
    write("mysql_packets", streams)
    statements = sql_seeds()
    write("sql_translate", statements)
    write("sql_execute", statements)
    write("zerorpc_event", zerorpc_seeds())
    write("celery_message", celery_seeds())
    write("permission", permission_seeds())
    write("ini_realm", ini_seeds())
    write("jwt", jwt_seeds())
    configs = config_seeds(bin_dir)
    if configs is None:
        print(f"config: no service binaries in {bin_dir} (make build); seeds kept", file=sys.stderr)
    else:
        write("config", configs)


if __name__ == "__main__":
    main()
