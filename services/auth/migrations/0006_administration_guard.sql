-- One row that every change able to take administration away from someone updates first, in
-- its own transaction: the row lock (PostgreSQL) or the write lock (SQLite) makes such changes
-- run one after another, so two concurrent ones cannot each leave the other's last
-- administrator and together leave none.
CREATE TABLE administration_guard (
    id      BIGINT PRIMARY KEY,
    changes BIGINT NOT NULL
);
INSERT INTO administration_guard (id, changes) VALUES (1, 0);
