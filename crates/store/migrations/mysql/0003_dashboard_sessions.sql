-- Dashboard sessions, shared by every server on this database, and the key
-- that signs the login form's tokens; the same tables as sqlite/0003.
-- The browser holds a random session id; only its SHA-256 (hex) is stored,
-- so a reader of this table cannot present it. `credential` is the
-- session's Keystone token (or the noauth project): a bearer secret until
-- expires_at, as trusted to the database as everything else it holds.
-- owner is "keystone:<user id>" or "noauth:<project>" (up to 255), hence
-- 320; the longest index, (owner, last_used), is (320 + 32) * 4 bytes.
CREATE TABLE dashboard_sessions (
    id_hash         VARCHAR(64)   NOT NULL PRIMARY KEY,
    credential_kind VARCHAR(16)   NOT NULL CHECK (credential_kind IN ('token', 'project')),
    credential      TEXT          NOT NULL,
    user_name       VARCHAR(255)  NOT NULL,
    project_name    VARCHAR(255)  NOT NULL,
    csrf            VARCHAR(64)   NOT NULL,
    proxies_visible INTEGER       NOT NULL,
    owner           VARCHAR(320)  NOT NULL,
    client          VARCHAR(64),
    expires_at      VARCHAR(32)   NOT NULL,
    last_used       VARCHAR(32)   NOT NULL,
    flash_error     INTEGER,
    flash_text      TEXT,
    created_at      VARCHAR(32)   NOT NULL,
    INDEX dashboard_sessions_owner (owner, last_used),
    INDEX dashboard_sessions_client (client, last_used),
    INDEX dashboard_sessions_last_used (last_used),
    INDEX dashboard_sessions_expires (expires_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Secrets every server shares, created once by whichever server needs one
-- first (INSERT IGNORE, then read).
CREATE TABLE dashboard_keys (
    name       VARCHAR(64)  NOT NULL PRIMARY KEY,
    secret     VARCHAR(128) NOT NULL,
    created_at VARCHAR(32)  NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
