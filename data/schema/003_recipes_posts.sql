-- Saved recipes, and the recipe behind every posted image so that its buttons (Reroll,
-- Remix, Recipe, Delete, Save) keep working after the bot restarts.

CREATE TABLE saved_recipes (
    id INTEGER PRIMARY KEY,
    guild_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL,
    recipe TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (guild_id, user_id, name_key)
);

CREATE TABLE posts (
    message_id INTEGER PRIMARY KEY,
    guild_id INTEGER NOT NULL,
    channel_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    recipe TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX posts_guild ON posts (guild_id, created_at);
