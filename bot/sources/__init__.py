"""Where LoRAs come from: Civitai AIRs, links and file hashes, looked up, fetched and verified.

The flow, one module per step:

- :mod:`bot.sources.refs` reads what an admin or a member typed (an AIR in any of the forms
  Civitai's spec allows, a Civitai model or download link, a file hash) into a reference.
- :mod:`bot.sources.civitai` asks Civitai's REST API about it and reads the answer into a
  :class:`~bot.sources.civitai.CivitaiVersion` (files, hashes, base model, trigger words...).
- :mod:`bot.sources.plan` decides, before a single byte is downloaded, whether this server
  may have that file (type, base model against the server's models, size against the
  operator's cap and the server's quota, NSFW level against the server's policy, safetensors
  only) and where it goes.
- :mod:`bot.sources.fetcher` has the engine download it (the engine owns the LoRA folder and
  may run on another machine: see ``engine.downloads``), follows the progress, and registers
  the verified file. Two requests for the same file share one download.
- :mod:`bot.sources.actions` is the Discord side: ``/lora add source:``, the "Look up on
  Civitai" button, AIRs in ``/imagine`` and on-demand fetching.

Nothing here imports torch, and production code never imports the Civitai double in tests/.
"""
