-- Issue 18: architectures are data (engine/arch, one module each), not a list in the schema.
-- models, loras and embeddings enumerated them in CHECK constraints, so adding an architecture
-- meant a migration; the bot checks names against engine.arch's registry instead
-- (bot.registry.text.check_architecture), and here a name need only be a short non-empty text.
--
-- SQLite cannot drop a CHECK in place: each table is rebuilt (new table, copy, drop, rename) and
-- its indexes and triggers made again. Ids are copied, so lora_fts (content_rowid = id) still
-- matches. Dropping loras with foreign keys on deletes its bookmarks (ON DELETE CASCADE; the
-- pragma cannot change inside this migration's transaction), so they are kept aside first and
-- put back. Dropping a table drops its triggers before its rows, so lora_fts is untouched.

CREATE TEMP TABLE bookmarks_kept AS SELECT * FROM bookmarks;

-- models
CREATE TABLE models_rebuilt (
    id INTEGER PRIMARY KEY,
    guild_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL,
    architecture TEXT NOT NULL CHECK (length(architecture) BETWEEN 1 AND 32),
    file TEXT NOT NULL,
    sha256 TEXT,
    autov2 TEXT,
    default_width INTEGER NOT NULL,
    default_height INTEGER NOT NULL,
    default_steps INTEGER NOT NULL,
    default_cfg REAL NOT NULL,
    default_sampler TEXT NOT NULL,
    default_negative TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    nsfw INTEGER NOT NULL DEFAULT 0,
    enabled INTEGER NOT NULL DEFAULT 1,
    allowed_channels TEXT NOT NULL DEFAULT '[]',
    added_by INTEGER NOT NULL,
    added_at REAL NOT NULL,
    family TEXT NOT NULL DEFAULT 'unknown',
    default_clip_skip INTEGER NOT NULL DEFAULT 1,
    prediction_type TEXT NOT NULL DEFAULT '',
    a1111_hash TEXT,
    vae TEXT NOT NULL DEFAULT '',
    UNIQUE (guild_id, name_key)
);
INSERT INTO models_rebuilt (id, guild_id, name, name_key, architecture, file, sha256, autov2, default_width, default_height, default_steps, default_cfg, default_sampler, default_negative, description, nsfw, enabled, allowed_channels, added_by, added_at, family, default_clip_skip, prediction_type, a1111_hash, vae)
    SELECT id, guild_id, name, name_key, architecture, file, sha256, autov2, default_width, default_height, default_steps, default_cfg, default_sampler, default_negative, description, nsfw, enabled, allowed_channels, added_by, added_at, family, default_clip_skip, prediction_type, a1111_hash, vae FROM models;
DROP TABLE models;
ALTER TABLE models_rebuilt RENAME TO models;

CREATE INDEX models_a1111_hash ON models (guild_id, a1111_hash);

CREATE INDEX models_sha256 ON models (guild_id, sha256);

-- loras
CREATE TABLE loras_rebuilt (
    id INTEGER PRIMARY KEY,
    guild_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL,
    architecture TEXT NOT NULL CHECK (length(architecture) BETWEEN 1 AND 32),
    category TEXT NOT NULL CHECK (category IN
        ('character', 'style', 'pose', 'detail', 'outfit', 'concept', 'speed', 'other')),
    trigger_words TEXT NOT NULL DEFAULT '[]',
    default_weight REAL NOT NULL,
    recommended_min REAL NOT NULL,
    recommended_max REAL NOT NULL,
    file TEXT NOT NULL,
    sha256 TEXT,
    autov2 TEXT,
    source TEXT,
    description TEXT NOT NULL DEFAULT '',
    nsfw INTEGER NOT NULL DEFAULT 0,
    preview_url TEXT,
    added_by INTEGER NOT NULL,
    added_at REAL NOT NULL,
    uses INTEGER NOT NULL DEFAULT 0,
    enabled INTEGER NOT NULL DEFAULT 1,
    family TEXT NOT NULL DEFAULT 'unknown',
    lora_format TEXT,
    rank INTEGER,
    trained_clip_skip INTEGER,
    a1111_hash TEXT,
    UNIQUE (guild_id, name_key)
);
INSERT INTO loras_rebuilt (id, guild_id, name, name_key, architecture, category, trigger_words, default_weight, recommended_min, recommended_max, file, sha256, autov2, source, description, nsfw, preview_url, added_by, added_at, uses, enabled, family, lora_format, rank, trained_clip_skip, a1111_hash)
    SELECT id, guild_id, name, name_key, architecture, category, trigger_words, default_weight, recommended_min, recommended_max, file, sha256, autov2, source, description, nsfw, preview_url, added_by, added_at, uses, enabled, family, lora_format, rank, trained_clip_skip, a1111_hash FROM loras;
DROP TABLE loras;
ALTER TABLE loras_rebuilt RENAME TO loras;

CREATE INDEX loras_a1111_hash ON loras (guild_id, a1111_hash);

CREATE INDEX loras_autocomplete ON loras (guild_id, architecture, name_key);

CREATE INDEX loras_by_added ON loras (guild_id, added_at DESC);

CREATE INDEX loras_by_family ON loras (guild_id, family);

CREATE INDEX loras_by_uses ON loras (guild_id, uses DESC);

CREATE INDEX loras_sha256 ON loras (guild_id, sha256);

CREATE TRIGGER loras_fts_delete AFTER DELETE ON loras BEGIN
    INSERT INTO lora_fts (lora_fts, rowid, name, trigger_words, description)
    VALUES ('delete', old.id, old.name, old.trigger_words, old.description);
END;

CREATE TRIGGER loras_fts_insert AFTER INSERT ON loras BEGIN
    INSERT INTO lora_fts (rowid, name, trigger_words, description)
    VALUES (new.id, new.name, new.trigger_words, new.description);
END;

CREATE TRIGGER loras_fts_update AFTER UPDATE OF name, trigger_words, description ON loras BEGIN
    INSERT INTO lora_fts (lora_fts, rowid, name, trigger_words, description)
    VALUES ('delete', old.id, old.name, old.trigger_words, old.description);
    INSERT INTO lora_fts (rowid, name, trigger_words, description)
    VALUES (new.id, new.name, new.trigger_words, new.description);
END;

-- embeddings
CREATE TABLE embeddings_rebuilt (
    id INTEGER PRIMARY KEY,
    guild_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL,
    architecture TEXT NOT NULL CHECK (length(architecture) BETWEEN 1 AND 32),
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
    source TEXT,
    UNIQUE (guild_id, name_key)
);
INSERT INTO embeddings_rebuilt (id, guild_id, name, name_key, architecture, family, file, sha256, autov2, vectors, description, nsfw, enabled, added_by, added_at, source)
    SELECT id, guild_id, name, name_key, architecture, family, file, sha256, autov2, vectors, description, nsfw, enabled, added_by, added_at, source FROM embeddings;
DROP TABLE embeddings;
ALTER TABLE embeddings_rebuilt RENAME TO embeddings;

INSERT INTO bookmarks SELECT * FROM bookmarks_kept WHERE lora_id IN (SELECT id FROM loras);
DROP TABLE bookmarks_kept;
