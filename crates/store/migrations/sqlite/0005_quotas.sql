-- Quotas per project (issue #14): `quotas` holds the limits an admin set
-- (NULL: the [quotas] default of the server), `quota_usages` what each
-- project holds. A create claims its forward and ports with a conditional
-- UPDATE of the project's usage row in the same transaction as its insert
-- (`... WHERE forwards + 1 <= limit AND ports + n <= limit`); the row lock
-- that UPDATE takes is what serialises racing creates of one project on
-- every server, so no number of them can pass the limit. A delete gives
-- them back in its own transaction. Counters start from the forwards that
-- exist when this migration runs.
-- Version 0004 is another change's (forward controls); migrations are
-- applied in version order and sqlx needs no contiguous numbering.
CREATE TABLE quotas (
    project_id VARCHAR(255) NOT NULL PRIMARY KEY,
    forwards   INTEGER CHECK (forwards >= -1),
    ports      INTEGER CHECK (ports >= -1),
    updated_at VARCHAR(32)  NOT NULL
);

CREATE TABLE quota_usages (
    project_id VARCHAR(255) NOT NULL PRIMARY KEY,
    forwards   INTEGER      NOT NULL DEFAULT 0,
    ports      INTEGER      NOT NULL DEFAULT 0
);
INSERT INTO quota_usages (project_id, forwards, ports)
    SELECT project_id, COUNT(*), SUM(external_port_end - external_port + 1)
    FROM forwards GROUP BY project_id;
