-- Issue 21: sampling profiles (engine/profiles.py, data/speed_profiles.json). A model (a
-- distilled checkpoint) or a LoRA (a speed LoRA: Lightning, Hyper-SD, LCM, DMD2, TCD) may
-- carry the id of the profile it needs; validation merges it into requests. A model's
-- fast_with names the speed LoRA (or the faster model) the server's fast mode uses with it.
-- NULL: none (every row registered before this migration).

ALTER TABLE models ADD COLUMN speed_profile TEXT;
ALTER TABLE models ADD COLUMN fast_with TEXT;
ALTER TABLE loras ADD COLUMN speed_profile TEXT;
