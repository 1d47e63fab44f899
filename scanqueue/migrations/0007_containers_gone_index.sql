-- scanqueue prune deletes containers gone for longer than database.retain_gone_days;
-- this index keeps that a range scan however large the inventory grows.
CREATE INDEX IF NOT EXISTS containers_gone_at ON containers (gone_at) WHERE gone_at IS NOT NULL;
