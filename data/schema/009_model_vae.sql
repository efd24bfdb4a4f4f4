-- A VAE per model (issue 8): a .safetensors VAE file relative to the engine's model folder
-- (e.g. the fp16-fix SDXL VAE); empty means the model's own VAE.
ALTER TABLE models ADD COLUMN vae TEXT NOT NULL DEFAULT '';
