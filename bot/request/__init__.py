"""A member's request on its way to the engine: parsed, checked, then turned into a recipe.

- :mod:`bot.request.parse`: raw command options and inline ``<lora:name:0.7>`` tags -> a request.
- :mod:`bot.request.resources`: the names a request uses, resolved against the catalog.
- :mod:`bot.request.rules`: the parameter rules, read from the model's architecture module
  (:mod:`engine.arch`): size, steps, CFG or distilled guidance, sampler, negative prompt,
  clip skip, prompt budget.
- :mod:`bot.request.outcome`: what checking produces (problems, notes, the validated recipe).
- :mod:`bot.request.validation`: :func:`~bot.request.validation.validate` joins the two kinds of check.
"""
