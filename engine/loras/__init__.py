"""LoRA files as per-layer weight deltas: key layouts in :mod:`.keys`, one module per format.

A LoRA file is read once into a :class:`~engine.loras.reader.LoraFile`: for each layer it
names, a delta object of its format (:mod:`.lora` for LoRA/LoCon, :mod:`.loha`, :mod:`.lokr`,
:mod:`.full`, :mod:`.ia3`, :mod:`.dora`) that knows its own maths. The weight patcher
(:mod:`engine.patcher`) only ever asks a delta for ``dense(W)`` (its ΔW at strength 1) or, for
plain low-rank deltas, for ``factors()``; so a format is one small module and nothing else
changes when one is added.
"""
