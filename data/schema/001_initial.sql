-- Models, LoRAs, bookmarks, settings and the audit log: the core of a server's registry.
-- Every row belongs to one guild; every lookup filters by guild_id first.

CREATE TABLE models (
    id INTEGER PRIMARY KEY,
    guild_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL,
    architecture TEXT NOT NULL CHECK (architecture IN ('sd15', 'sdxl', 'sd3', 'flux', 'unknown')),
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
    UNIQUE (guild_id, name_key)
);

CREATE TABLE loras (
    id INTEGER PRIMARY KEY,
    guild_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL,
    architecture TEXT NOT NULL CHECK (architecture IN ('sd15', 'sdxl', 'sd3', 'flux', 'unknown')),
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
    UNIQUE (guild_id, name_key)
);

CREATE TABLE bookmarks (
    guild_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    lora_id INTEGER NOT NULL REFERENCES loras (id) ON DELETE CASCADE,
    created_at REAL NOT NULL,
    PRIMARY KEY (guild_id, user_id, lora_id)
);
CREATE INDEX bookmarks_lora ON bookmarks (lora_id);

CREATE TABLE guild_settings (
    guild_id INTEGER PRIMARY KEY,
    settings TEXT NOT NULL
);

CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY,
    guild_id INTEGER NOT NULL,
    actor_id INTEGER NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL DEFAULT '',
    details TEXT NOT NULL DEFAULT '{}',
    at REAL NOT NULL
);
CREATE INDEX audit_log_guild ON audit_log (guild_id, id);
