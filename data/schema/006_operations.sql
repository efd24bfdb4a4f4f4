-- Running the bot for real: what the command tree looked like when it was last synced (so a
-- restart with the same commands makes no sync call), servers the bot was removed from (their
-- data is deleted once the grace period has passed), and the indexes that let a member see
-- and delete their own data without scanning a whole server.

CREATE TABLE command_sync (
    -- 'global', or 'guild:<id>' for a development server synced directly.
    scope TEXT NOT NULL,
    application_id INTEGER NOT NULL,
    tree_hash TEXT NOT NULL,
    synced_at REAL NOT NULL,
    PRIMARY KEY (scope, application_id)
);

CREATE TABLE guild_departures (
    guild_id INTEGER PRIMARY KEY,
    left_at REAL NOT NULL
);

CREATE INDEX posts_user ON posts (guild_id, user_id);
CREATE INDEX audit_log_actor ON audit_log (guild_id, actor_id);
