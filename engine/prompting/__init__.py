"""Prompts as AUTOMATIC1111 reads them: emphasis, escapes, ``BREAK``, any length, embeddings.

- :mod:`engine.prompting.attention` parses the ``(word:1.2)`` / ``[word]`` syntax (torch-free);
- :mod:`engine.prompting.chunks` cuts prompts into 75-token chunks (torch-free, the bot uses it
  to count tokens);
- :mod:`engine.prompting.encode` runs the text encoders and builds the pipeline's inputs.
"""
