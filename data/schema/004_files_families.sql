-- Issue 9: what files are (LoRA maths, rank, family), per-model clip skip and prediction type,
-- and textual-inversion embeddings as their own registry kind.

ALTER TABLE models ADD COLUMN family TEXT NOT NULL DEFAULT 'unknown';
ALTER TABLE models ADD COLUMN default_clip_skip INTEGER NOT NULL DEFAULT 1;
-- '' reads the prediction type from the file; otherwise an admin's override.
ALTER TABLE models ADD COLUMN prediction_type TEXT NOT NULL DEFAULT '';

ALTER TABLE loras ADD COLUMN family TEXT NOT NULL DEFAULT 'unknown';
ALTER TABLE loras ADD COLUMN lora_format TEXT;
ALTER TABLE loras ADD COLUMN rank INTEGER;
ALTER TABLE loras ADD COLUMN trained_clip_skip INTEGER;
CREATE INDEX loras_by_family ON loras (guild_id, family);

CREATE TABLE embeddings (
    id INTEGER PRIMARY KEY,
    guild_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL,
    architecture TEXT NOT NULL CHECK (architecture IN ('sd15', 'sdxl', 'sd3', 'flux', 'unknown')),
    family TEXT NOT NULL DEFAULT 'unknown',
    file TEXT NOT NULL,
    sha256 TEXT,
    autov2 TEXT,
    vectors INTEGER,
    description TEXT NOT NULL DEFAULT '',
    nsfw INTEGER NOT NULL DEFAULT 0,
    enabled INTEGER NOT NULL DEFAULT 1,
    added_by INTEGER NOT NULL,
    added_at REAL NOT NULL,
    UNIQUE (guild_id, name_key)
);
