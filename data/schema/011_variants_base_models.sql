-- Issue 18: a model's variant within its architecture (FLUX.1 "dev", "schnell", "fill", ...),
-- read from its file at registration, so validation applies that variant's rules (schnell:
-- 4 steps, no guidance; dev: 28 steps, distilled guidance 3.5). LoRAs keep the variant they
-- were trained on where it is known, and Civitai's baseModel name ("Flux.1 S", "Pony") of a
-- fetched version, which names the weights it was trained against more closely than its AIR.
-- NULL: not known (every row registered before this migration).

ALTER TABLE models ADD COLUMN variant TEXT;
ALTER TABLE loras ADD COLUMN variant TEXT;
ALTER TABLE loras ADD COLUMN base_model TEXT;
