-- Address groups (issue #16): a group's virtual addresses are carried by
-- every member proxy, and VRRP (keepalived) decides which member holds them.
-- The group itself is a row of proxies (host 'group:NAME'), so placement,
-- ports, quotas and summaries treat it as one proxy; these tables say who
-- its members are and which of them cannot carry a forward.

-- One row per (group, member), refreshed by the member's heartbeats: what it
-- was configured with (every member must agree) and whether it holds the
-- addresses now.
CREATE TABLE group_members (
    group_name        VARCHAR(64) NOT NULL,
    member            VARCHAR(255) NOT NULL,
    addresses         VARCHAR(1024) NOT NULL,
    virtual_router_id INTEGER       NOT NULL CHECK (virtual_router_id BETWEEN 1 AND 255),
    holder            INTEGER       NOT NULL DEFAULT 0,
    keepalived        VARCHAR(255) NOT NULL DEFAULT '',
    last_report       VARCHAR(32) NOT NULL,
    PRIMARY KEY (group_name, member)
);

-- The forwards of a group that a member reported it cannot carry, with its
-- reason: rows exist only for failures, so a healthy group costs nothing
-- here. A forward's status comes from the member that holds the addresses;
-- these rows say how many members carry it.
CREATE TABLE group_member_errors (
    forward_id VARCHAR(36) NOT NULL,
    member     VARCHAR(255) NOT NULL,
    reason     VARCHAR(1024) NOT NULL,
    PRIMARY KEY (forward_id, member)
);
CREATE INDEX group_member_errors_member ON group_member_errors (member);
