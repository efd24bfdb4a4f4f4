"""The engine: the separate process that owns torch and the GPU and turns recipes into PNGs.

Importing this package (and :mod:`engine.protocol`, :mod:`engine.client`,
:mod:`engine.png_metadata`, :mod:`engine.inspect`) never imports torch, so the bot can use the
wire contract and the client without paying for it. Start the process with
``python -m engine serve``.
"""
