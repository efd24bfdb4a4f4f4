"""The Discord front end: Discord -> parse -> validate -> queue -> engine -> post.

The bot process never imports torch (a test checks it): it talks to the engine process over
HTTP through :class:`engine.client.EngineClient`. Run it with ``python -m bot``, or try the
offline sandbox with ``make demo`` (``python -m sandbox demo``, from a source checkout).
"""
