-- Navigator's initial schema (PostgreSQL); the same tables as sqlite/0001.
-- The unique constraint on the external endpoint is what makes two racing
-- creates of one port end in one success and one conflict.
-- Text columns use the "C" collation so that they compare and sort by code
-- point, as in SQLite and MySQL (utf8mb4_bin), whatever the database's locale:
-- keyset pagination and sort orders then agree across backends.
CREATE TABLE forwards (
    id                  VARCHAR(36)   COLLATE "C" NOT NULL PRIMARY KEY,
    project_id          VARCHAR(255)  COLLATE "C" NOT NULL,
    description         VARCHAR(255)  COLLATE "C" NOT NULL DEFAULT '',
    protocol            VARCHAR(8)    COLLATE "C" NOT NULL CHECK (protocol IN ('tcp', 'udp')),
    external_address    VARCHAR(64)   COLLATE "C" NOT NULL,
    external_port       INTEGER       NOT NULL CHECK (external_port BETWEEN 1 AND 65535),
    internal_ip_address VARCHAR(64)   COLLATE "C" NOT NULL,
    internal_port       INTEGER       NOT NULL CHECK (internal_port BETWEEN 1 AND 65535),
    instance_id         VARCHAR(255)  COLLATE "C",
    proxy               VARCHAR(255)  COLLATE "C" NOT NULL,
    status              VARCHAR(16)   COLLATE "C" NOT NULL CHECK (status IN ('PENDING', 'ACTIVE', 'ERROR', 'DELETING')),
    status_reason       VARCHAR(1024) COLLATE "C",
    created_at          VARCHAR(32)   COLLATE "C" NOT NULL,
    updated_at          VARCHAR(32)   COLLATE "C" NOT NULL,
    CONSTRAINT uniq_external_endpoint UNIQUE (external_address, protocol, external_port)
);
CREATE INDEX forwards_project ON forwards (project_id, created_at, id);
CREATE INDEX forwards_instance ON forwards (instance_id);
CREATE INDEX forwards_proxy ON forwards (proxy);

CREATE TABLE proxies (
    host               VARCHAR(255)  COLLATE "C" NOT NULL PRIMARY KEY,
    backend            VARCHAR(16)   COLLATE "C" NOT NULL,
    external_addresses VARCHAR(1024) COLLATE "C" NOT NULL,
    port_first         INTEGER       NOT NULL,
    port_last          INTEGER       NOT NULL,
    last_heartbeat     VARCHAR(32)   COLLATE "C" NOT NULL,
    created_at         VARCHAR(32)   COLLATE "C" NOT NULL
);
