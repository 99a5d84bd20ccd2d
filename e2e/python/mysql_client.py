"""A Python application using PyMySQL against quartet-db. Prints one JSON object of what it saw.

usage: mysql_client.py <host> <port> <user> <password> <database>
"""
import json
import sys

import pymysql


def main(host, port, user, password, database):
    seen = {}
    conn = pymysql.connect(host=host, port=int(port), user=user, password=password, database=database, autocommit=True)
    with conn.cursor() as cur:
        cur.execute("SELECT @@version_comment, DATABASE()")
        seen["server"] = list(cur.fetchone())
        cur.execute("CREATE TABLE orders (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, item VARCHAR(40) NOT NULL, qty INT NOT NULL, price DOUBLE)")
        cur.execute("INSERT INTO orders (item, qty, price) VALUES (%s, %s, %s)", ("tea", 2, 3.5))
        seen["first_id"] = cur.lastrowid
        cur.executemany("INSERT INTO orders (item, qty, price) VALUES (%s, %s, %s)", [("cake", 1, 4.25), ("jam", 3, None)])
        cur.execute("SELECT id, item, qty, price FROM orders ORDER BY id")
        seen["rows"] = [list(r) for r in cur.fetchall()]
        seen["types"] = [type(v).__name__ for v in seen["rows"][0]]
        try:
            cur.execute("INSERT INTO orders (id, item, qty) VALUES (1, 'dup', 1)")
        except pymysql.err.IntegrityError as e:
            seen["duplicate"] = e.args[0]
        try:
            cur.execute("SELECT * FROM missing")
        except pymysql.err.ProgrammingError as e:
            seen["missing"] = [e.args[0], e.args[1]]
        # Transactions on a second connection (PyMySQL's default, autocommit off): a
        # rolled-back insert vanishes, a committed one stays.
        tx = pymysql.connect(host=host, port=int(port), user=user, password=password, database=database)
        with tx.cursor() as t:
            t.execute("INSERT INTO orders (item, qty) VALUES ('ghost', 1)")
            t.execute("SELECT COUNT(*) FROM orders WHERE item = 'ghost'")
            seen["inside"] = t.fetchone()[0]
        tx.rollback()
        with tx.cursor() as t:
            t.execute("INSERT INTO orders (item, qty) VALUES ('kept', 1)")
        tx.commit()
        tx.close()
        cur.execute("SELECT item FROM orders WHERE item IN ('ghost', 'kept')")
        seen["after_transactions"] = [r[0] for r in cur.fetchall()]
        cur.execute("SHOW TABLES")
        seen["tables"] = [r[0] for r in cur.fetchall()]
    conn.close()
    try:
        pymysql.connect(host=host, port=int(port), user=user, password="wrong", database=database)
    except pymysql.err.OperationalError as e:
        seen["bad_password"] = e.args[0]
    print(json.dumps(seen))


if __name__ == "__main__":
    main(*sys.argv[1:6])
