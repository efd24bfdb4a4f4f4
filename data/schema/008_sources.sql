-- Issue 13: LoRAs and embeddings fetched from Civitai (or registered by hand and looked up
-- there) keep their AIR, so members can call them by it and recipes match them by version.
-- LoRAs have had a source column since 001; embeddings get theirs here.

ALTER TABLE embeddings ADD COLUMN source TEXT;
