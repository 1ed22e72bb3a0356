-- Navigator's initial schema (MySQL/MariaDB); the same tables as sqlite/0001.
-- The unique constraint on the external endpoint is what makes two racing
-- creates of one port end in one success and one conflict.
-- For Galera: InnoDB, and a primary key on every table. utf8mb4_bin makes
-- text compare and sort by code point, as in SQLite and PostgreSQL (the
-- default collations ignore case, which would make project ids that differ
-- only in case equal). Keys stay VARCHAR: MySQL cannot index TEXT; the
-- longest index, forwards_project, is (255 + 32 + 36) * 4 bytes, within
-- InnoDB's 3072.
CREATE TABLE forwards (
    id                  VARCHAR(36)   NOT NULL PRIMARY KEY,
    project_id          VARCHAR(255)  NOT NULL,
    description         VARCHAR(255)  NOT NULL DEFAULT '',
    protocol            VARCHAR(8)    NOT NULL CHECK (protocol IN ('tcp', 'udp')),
    external_address    VARCHAR(64)   NOT NULL,
    external_port       INTEGER       NOT NULL CHECK (external_port BETWEEN 1 AND 65535),
    internal_ip_address VARCHAR(64)   NOT NULL,
    internal_port       INTEGER       NOT NULL CHECK (internal_port BETWEEN 1 AND 65535),
    instance_id         VARCHAR(255),
    proxy               VARCHAR(255)  NOT NULL,
    status              VARCHAR(16)   NOT NULL CHECK (status IN ('PENDING', 'ACTIVE', 'ERROR', 'DELETING')),
    status_reason       VARCHAR(1024),
    created_at          VARCHAR(32)   NOT NULL,
    updated_at          VARCHAR(32)   NOT NULL,
    CONSTRAINT uniq_external_endpoint UNIQUE (external_address, protocol, external_port),
    INDEX forwards_project (project_id, created_at, id),
    INDEX forwards_instance (instance_id),
    INDEX forwards_proxy (proxy)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE proxies (
    host               VARCHAR(255)  NOT NULL PRIMARY KEY,
    backend            VARCHAR(16)   NOT NULL,
    external_addresses VARCHAR(1024) NOT NULL,
    port_first         INTEGER       NOT NULL,
    port_last          INTEGER       NOT NULL,
    last_heartbeat     VARCHAR(32)   NOT NULL,
    created_at         VARCHAR(32)   NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
