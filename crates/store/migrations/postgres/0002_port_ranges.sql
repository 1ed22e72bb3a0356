-- Port ranges (Neutron's port-forwarding ranges): a forward covers
-- external_port..=external_port_end, sent to internal_port..=internal_port_end
-- (same size) or all to internal_port (internal_port_end = internal_port).
-- Existing rows are single-port forwards.
ALTER TABLE forwards ADD COLUMN external_port_end INTEGER NOT NULL DEFAULT 0;
ALTER TABLE forwards ADD COLUMN internal_port_end INTEGER NOT NULL DEFAULT 0;
UPDATE forwards SET external_port_end = external_port, internal_port_end = internal_port;

-- One row per external port a forward occupies, written in the same
-- transaction as the forward and deleted with it. Its primary key is what
-- makes two forwards on one (external_address, protocol, port) impossible,
-- overlapping ranges and racing servers included; uniq_external_endpoint on
-- forwards stays as a second guard for the first port.
CREATE TABLE forward_ports (
    external_address VARCHAR(64) NOT NULL,
    protocol         VARCHAR(8)  NOT NULL,
    port             INTEGER     NOT NULL CHECK (port BETWEEN 1 AND 65535),
    forward_id       VARCHAR(36) NOT NULL,
    PRIMARY KEY (external_address, protocol, port)
);
CREATE INDEX forward_ports_forward ON forward_ports (forward_id);
INSERT INTO forward_ports (external_address, protocol, port, forward_id)
    SELECT external_address, protocol, external_port, id FROM forwards;
