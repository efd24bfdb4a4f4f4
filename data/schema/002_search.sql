-- Full-text search over LoRA names, trigger words and descriptions, plus the indexes that
-- keep autocomplete and sorted listings fast with 100,000 LoRAs in one server.

CREATE VIRTUAL TABLE lora_fts USING fts5 (
    name, trigger_words, description,
    content = 'loras', content_rowid = 'id',
    tokenize = "unicode61 remove_diacritics 2 tokenchars '_'",
    prefix = '1 2 3'
);

-- The FTS index mirrors `loras` through triggers. trigger_words is JSON; the tokenizer
-- ignores the brackets, quotes and commas, so the words index as words.
CREATE TRIGGER loras_fts_insert AFTER INSERT ON loras BEGIN
    INSERT INTO lora_fts (rowid, name, trigger_words, description)
    VALUES (new.id, new.name, new.trigger_words, new.description);
END;
CREATE TRIGGER loras_fts_delete AFTER DELETE ON loras BEGIN
    INSERT INTO lora_fts (lora_fts, rowid, name, trigger_words, description)
    VALUES ('delete', old.id, old.name, old.trigger_words, old.description);
END;
CREATE TRIGGER loras_fts_update AFTER UPDATE OF name, trigger_words, description ON loras BEGIN
    INSERT INTO lora_fts (lora_fts, rowid, name, trigger_words, description)
    VALUES ('delete', old.id, old.name, old.trigger_words, old.description);
    INSERT INTO lora_fts (rowid, name, trigger_words, description)
    VALUES (new.id, new.name, new.trigger_words, new.description);
END;

-- Rows that existed before this migration.
INSERT INTO lora_fts (rowid, name, trigger_words, description)
SELECT id, name, trigger_words, description FROM loras;

-- Autocomplete walks these in order and stops after 25 rows.
CREATE INDEX loras_autocomplete ON loras (guild_id, architecture, name_key);
CREATE INDEX loras_by_uses ON loras (guild_id, uses DESC);
CREATE INDEX loras_by_added ON loras (guild_id, added_at DESC);
