-- Per-forward traffic controls (#14). allowed_cidrs is a comma-separated
-- list of canonical CIDRs, sorted and without duplicates (so that equal
-- lists are equal text); NULL or empty means everyone. Up to 10,000 entries
-- of at most 43 characters, hence TEXT. max_connections NULL is no limit of
-- the forward's own. Rows written before this migration read as defaults.
ALTER TABLE forwards ADD COLUMN allowed_cidrs TEXT;
ALTER TABLE forwards ADD COLUMN max_connections INTEGER;
ALTER TABLE forwards ADD COLUMN proxy_protocol VARCHAR(8) NOT NULL DEFAULT 'none';

-- What an agent announces it can do (comma-separated, e.g. "controls"); an
-- agent older than the announcement reports nothing and is sent no forward
-- with non-default controls, which it would ignore.
ALTER TABLE proxies ADD COLUMN features VARCHAR(255) NOT NULL DEFAULT '';
