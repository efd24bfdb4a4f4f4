-- The server recipe book, recipe cards, where each result came from, and the hashes other
-- tools write, so images from AUTOMATIC1111, ComfyUI, SwarmUI or Civitai match the registry.

-- A1111's LoRA hash / SwarmUI's tensor hash / Civitai's AutoV3 all start with these 12 hex
-- digits: the sha256 of a safetensors file's bytes after its header. NULL for entries
-- registered before this migration (they still match by sha256, AutoV2 and name).
ALTER TABLE loras ADD COLUMN a1111_hash TEXT;
ALTER TABLE models ADD COLUMN a1111_hash TEXT;
CREATE INDEX loras_sha256 ON loras (guild_id, sha256);
CREATE INDEX loras_a1111_hash ON loras (guild_id, a1111_hash);
CREATE INDEX models_sha256 ON models (guild_id, sha256);
CREATE INDEX models_a1111_hash ON models (guild_id, a1111_hash);

-- Lineage: the message a result was rerolled, remixed or made from, and why.
ALTER TABLE posts ADD COLUMN origin TEXT NOT NULL DEFAULT 'imagine';
ALTER TABLE posts ADD COLUMN parent_message_id INTEGER;
ALTER TABLE posts ADD COLUMN parent_channel_id INTEGER;
CREATE INDEX posts_parent ON posts (guild_id, parent_message_id);

-- The attachments of each result, so "Remix this image" on a forward or a re-post that kept
-- Discord's attachment finds our recipe without reading the file.
CREATE TABLE post_attachments (
    attachment_id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES posts (message_id) ON DELETE CASCADE,
    guild_id INTEGER NOT NULL
);
CREATE INDEX post_attachments_message ON post_attachments (message_id);

-- Recipes saved under a name for the whole server; names are unique per server.
CREATE TABLE recipe_book (
    id INTEGER PRIMARY KEY,
    guild_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL,
    recipe TEXT NOT NULL,
    author_id INTEGER NOT NULL,
    -- name_key of the recipe's model, for filtering without parsing every recipe.
    model_key TEXT NOT NULL DEFAULT '',
    source_message_id INTEGER,
    created_at REAL NOT NULL,
    uses INTEGER NOT NULL DEFAULT 0,
    UNIQUE (guild_id, name_key)
);
CREATE INDEX recipe_book_newest ON recipe_book (guild_id, created_at DESC);
CREATE INDEX recipe_book_most_used ON recipe_book (guild_id, uses DESC);
CREATE INDEX recipe_book_model ON recipe_book (guild_id, model_key);
CREATE INDEX recipe_book_author ON recipe_book (guild_id, author_id);

CREATE TABLE recipe_book_loras (
    book_id INTEGER NOT NULL REFERENCES recipe_book (id) ON DELETE CASCADE,
    guild_id INTEGER NOT NULL,
    lora_key TEXT NOT NULL,
    PRIMARY KEY (book_id, lora_key)
);
CREATE INDEX recipe_book_loras_key ON recipe_book_loras (guild_id, lora_key);

-- A recipe shown as a card (shared in a channel, shown privately, or read from an image):
-- its buttons name the card by id and find the recipe here, so they survive restarts.
CREATE TABLE recipe_cards (
    id INTEGER PRIMARY KEY,
    guild_id INTEGER NOT NULL,
    channel_id INTEGER NOT NULL,
    -- The card's own message once posted; NULL for private answers.
    message_id INTEGER,
    recipe TEXT NOT NULL,
    -- Who made the recipe (credited on the card) and who shared or read it.
    author_id INTEGER,
    shared_by INTEGER NOT NULL,
    -- "post", "book", "code" or "import:<format>"; with the message or book entry it came from.
    source TEXT NOT NULL,
    source_message_id INTEGER,
    source_channel_id INTEGER,
    book_name TEXT,
    image_url TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX recipe_cards_message ON recipe_cards (message_id);
CREATE INDEX recipe_cards_guild ON recipe_cards (guild_id, created_at);
