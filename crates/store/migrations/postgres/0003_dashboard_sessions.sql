-- Dashboard sessions, shared by every server on this database, and the key
-- that signs the login form's tokens. The browser holds a random session id;
-- only its SHA-256 (hex) is stored, so a reader of this table cannot present
-- it. `credential` is the session's Keystone token (or the noauth project):
-- a bearer secret until expires_at, as trusted to the database as
-- everything else it holds. Times are fixed-width RFC 3339 UTC text.
-- owner is "keystone:<user id>" or "noauth:<project>" (up to 255), hence 320.
CREATE TABLE dashboard_sessions (
    id_hash         VARCHAR(64)   COLLATE "C" NOT NULL PRIMARY KEY,
    credential_kind VARCHAR(16)   COLLATE "C" NOT NULL CHECK (credential_kind IN ('token', 'project')),
    credential      TEXT          COLLATE "C" NOT NULL,
    user_name       VARCHAR(255)  COLLATE "C" NOT NULL,
    project_name    VARCHAR(255)  COLLATE "C" NOT NULL,
    csrf            VARCHAR(64)   COLLATE "C" NOT NULL,
    proxies_visible INTEGER       NOT NULL,
    owner           VARCHAR(320)  COLLATE "C" NOT NULL,
    client          VARCHAR(64)   COLLATE "C",
    expires_at      VARCHAR(32)   COLLATE "C" NOT NULL,
    last_used       VARCHAR(32)   COLLATE "C" NOT NULL,
    flash_error     INTEGER,
    flash_text      TEXT          COLLATE "C",
    created_at      VARCHAR(32)   COLLATE "C" NOT NULL
);
CREATE INDEX dashboard_sessions_owner ON dashboard_sessions (owner, last_used);
CREATE INDEX dashboard_sessions_client ON dashboard_sessions (client, last_used);
CREATE INDEX dashboard_sessions_last_used ON dashboard_sessions (last_used);
CREATE INDEX dashboard_sessions_expires ON dashboard_sessions (expires_at);

-- Secrets every server shares, created once by whichever server needs one
-- first (INSERT that ignores a conflict, then read).
CREATE TABLE dashboard_keys (
    name       VARCHAR(64)  COLLATE "C" NOT NULL PRIMARY KEY,
    secret     VARCHAR(128) COLLATE "C" NOT NULL,
    created_at VARCHAR(32)  COLLATE "C" NOT NULL
);
