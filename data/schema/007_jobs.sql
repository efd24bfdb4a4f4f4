-- The job table: every accepted image request, from the moment the member is told it is
-- queued until its result (or a clear message) is posted. It is the source of truth for the
-- bot's queue: a restart reloads every unfinished job from here.
--
-- state: queued -> submitted -> running -> posting -> done, or failed / cancelled.
-- attempts counts submissions to an engine (the engine job id is "<id>.<attempts>", so a
-- resubmit after a restart asks the engine about the same run); losses counts runs cut short
-- by an engine that died or stalled (one more run is allowed, then the job fails).
-- told is 1 once the member has been told the final outcome.

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    guild_id INTEGER NOT NULL,
    channel_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    user_name TEXT NOT NULL,
    origin TEXT NOT NULL DEFAULT 'imagine',
    state TEXT NOT NULL CHECK (state IN
        ('queued', 'submitted', 'running', 'posting', 'done', 'failed', 'cancelled')),
    weight INTEGER NOT NULL DEFAULT 1,
    recipe TEXT NOT NULL,
    -- the image this one was rerolled or remixed from, and its credit line (JSON [label, link])
    parent_message_id INTEGER,
    parent_channel_id INTEGER,
    parent_credit TEXT,
    notes TEXT NOT NULL DEFAULT '[]',
    file_limit INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    losses INTEGER NOT NULL DEFAULT 0,
    engine TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    application_id INTEGER,
    interaction_token TEXT,
    token_expires_at REAL,
    status_message_id INTEGER,
    result_message_ids TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    seconds REAL,
    told INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    submitted_at REAL,
    started_at REAL,
    posting_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL
);
CREATE INDEX jobs_open ON jobs (state) WHERE state NOT IN ('done', 'failed', 'cancelled') OR told = 0;
CREATE INDEX jobs_member ON jobs (guild_id, user_id, created_at);
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
