"""A member's request on its way to the engine: checked, then turned into a recipe.

- :mod:`bot.request.resources`: the names a request uses, resolved against the catalog.
- :mod:`bot.request.rules`: the parameter rules, read from the model's architecture module
  (:mod:`engine.arch`): size, steps, CFG or distilled guidance, sampler, negative prompt,
  clip skip, prompt budget.
- :mod:`bot.request.outcome`: what checking produces (problems, notes, the validated recipe).

:func:`bot.validation.validate` joins the two kinds of check.
"""
