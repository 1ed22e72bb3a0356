-- Per-proxy summaries of the desired set (issue #18), so that a heartbeat
-- is checked against the store without reading the proxy's forwards.
-- One row per proxy and bucket (the first byte of a forward's id, see
-- navigator_core::digest): how many forwards of the bucket the proxy's agent
-- must carry, and the sums modulo 2^32 of the low and high halves of their
-- hashes. Every change of a forward updates its bucket's row in the same
-- transaction (with revision + 1); a row that is missing or not ready
-- (rows from before this migration, or written before the first rebuild) is
-- rebuilt from the forwards by the server, under the rows' locks.
CREATE TABLE proxy_digests (
    proxy    VARCHAR(255) NOT NULL,
    bucket   INTEGER      NOT NULL CHECK (bucket BETWEEN 0 AND 255),
    forwards BIGINT       NOT NULL DEFAULT 0,
    low      BIGINT       NOT NULL DEFAULT 0,
    high     BIGINT       NOT NULL DEFAULT 0,
    revision BIGINT       NOT NULL DEFAULT 0,
    ready    INTEGER      NOT NULL DEFAULT 0,
    PRIMARY KEY (proxy, bucket)
);

-- A bucket of a proxy is a range of ids: (proxy, id) finds it, and serves
-- every query by proxy that (proxy) served.
CREATE INDEX forwards_proxy_id ON forwards (proxy, id);
DROP INDEX forwards_proxy;
