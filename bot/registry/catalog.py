"""An in-memory snapshot of one server's registry, built for validation.

Validation runs on every ``/imagine`` and must stay pure and fast, so it never touches the
database: the registry hands it a :class:`Catalog` (cached per guild, rebuilt after admin
changes). "Did you mean" suggestions use a trigram index over names *and* trigger words, so
a typo costs a few dictionary lookups instead of comparing against every name.
"""

from __future__ import annotations

import bisect
import difflib
from collections import Counter
from collections.abc import Iterable, Mapping
from functools import cached_property

from bot.registry.models import LoraEntry, ModelEntry, ServerSettings
from bot.registry.text import name_key

#: Stop adding posting lists once this many candidate hits were counted; the rarest
#: trigrams come first, and they are the ones that tell names apart.
_POSTINGS_BUDGET = 6_000
_CANDIDATES = 24


def trigrams(key: str) -> set[str]:
    padded = f"  {key} "
    return {padded[i : i + 3] for i in range(len(padded) - 2)}


class NameIndex:
    """Finds the registered names closest to a misspelt one.

    Each *term* is a name or a trigger word and points at the name it stands for, so typing
    a LoRA's trigger word suggests the LoRA.
    """

    def __init__(self, terms: Iterable[tuple[str, str]]) -> None:
        self._term_keys: list[str] = []
        self._targets: list[str] = []
        self._gram_counts: list[int] = []
        postings: dict[str, list[int]] = {}
        for term, target in terms:
            key = name_key(term)
            if not key:
                continue
            index = len(self._term_keys)
            self._term_keys.append(key)
            self._targets.append(target)
            grams = trigrams(key)
            self._gram_counts.append(len(grams))
            for gram in grams:
                postings.setdefault(gram, []).append(index)
        self._postings = postings
        self._sorted = sorted((key, i) for i, key in enumerate(self._term_keys))

    def __len__(self) -> int:
        return len(self._term_keys)

    def suggest(self, text: str, limit: int = 3) -> list[str]:
        """Up to ``limit`` distinct target names, closest first."""
        key = name_key(text)
        if not key or not self._term_keys:
            return []
        grams = trigrams(key)
        lists = sorted((self._postings[g] for g in grams if g in self._postings), key=len)
        hits: Counter[int] = Counter()
        counted = 0
        for i, posting in enumerate(lists):
            if i >= 3 and counted + len(posting) > _POSTINGS_BUDGET:
                break
            hits.update(posting)
            counted += len(posting)
        candidates = {i for i, _ in hits.most_common(_CANDIDATES)}
        # Names that start with what was typed are good guesses even with few shared trigrams.
        start = bisect.bisect_left(self._sorted, (key, -1))
        for term, i in self._sorted[start : start + 8]:
            if not term.startswith(key):
                break
            candidates.add(i)
        scored: list[tuple[float, str]] = []
        matcher = difflib.SequenceMatcher(autojunk=False)
        matcher.set_seq2(key)
        for i in candidates:
            term = self._term_keys[i]
            matcher.set_seq1(term)
            score = matcher.ratio()
            if term.startswith(key) or key.startswith(term):
                score += 0.2
            scored.append((score, self._targets[i]))
        scored.sort(key=lambda item: (-item[0], item[1]))
        out: list[str] = []
        for _, target in scored:
            if target not in out:
                out.append(target)
                if len(out) == limit:
                    break
        return out


class Catalog:
    """Read-only view of one server: settings, models and LoRAs keyed by :func:`name_key`."""

    def __init__(
        self,
        guild_id: int,
        settings: ServerSettings,
        models: Iterable[ModelEntry],
        loras: Iterable[LoraEntry],
    ) -> None:
        self.guild_id = guild_id
        self.settings = settings
        self.models: Mapping[str, ModelEntry] = {name_key(m.name): m for m in models}
        self.loras: Mapping[str, LoraEntry] = {name_key(lora.name): lora for lora in loras}

    def model(self, name: str) -> ModelEntry | None:
        return self.models.get(name_key(name))

    def lora(self, name: str) -> LoraEntry | None:
        return self.loras.get(name_key(name))

    @cached_property
    def _lora_index(self) -> NameIndex:
        def terms() -> Iterable[tuple[str, str]]:
            for lora in self.loras.values():
                yield lora.name, lora.name
                for word in lora.trigger_words:
                    yield word, lora.name

        return NameIndex(terms())

    @cached_property
    def _model_index(self) -> NameIndex:
        return NameIndex((m.name, m.name) for m in self.models.values())

    def suggest_loras(self, text: str, limit: int = 3) -> list[str]:
        """The closest LoRA names to ``text``, trigger words included."""
        return self._lora_index.suggest(text, limit)

    def suggest_models(self, text: str, limit: int = 3) -> list[str]:
        return self._model_index.suggest(text, limit)

    def warm(self) -> Catalog:
        """Build the suggestion indexes now, so the first typo does not pay for them."""
        _ = self._lora_index, self._model_index
        return self
