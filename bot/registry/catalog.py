"""An in-memory snapshot of one server's registry, built for validation.

Validation runs on every ``/imagine`` and must stay pure and fast, so it never touches the
database: the registry hands it a :class:`Catalog` (cached per guild, rebuilt after admin
changes). "Did you mean" suggestions use a trigram index over names *and* trigger words, so
a typo costs a few dictionary lookups instead of comparing against every name.
"""

from __future__ import annotations

import bisect
import json
import threading
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cached_property
from typing import Any

from bot.registry.models import EmbeddingEntry, LoraEntry, ModelEntry, ServerSettings
from bot.registry.text import name_key
from bot.sources.refs import SourceError, parse_air, parse_source

#: Stop adding posting lists once this many hits were counted; the rarest trigrams come
#: first, and they are the ones that tell names apart.
_POSTINGS_BUDGET = 1_500
_CANDIDATES = 24


def trigrams(key: str) -> set[str]:
    padded = f"  {key} "
    return {padded[i : i + 3] for i in range(len(padded) - 2)}


def source_keys(source: str) -> list[tuple[str, str, str]]:
    """The keys a stored source is found by: ``("version", source, version)`` and
    ``("model", source, id)`` (a Civitai link gives the same keys as its AIR)."""
    try:
        if source.lower().startswith(("http://", "https://")):
            ref = parse_source(source)
            keys = [("version", "civitai", str(ref.version_id))] if ref.version_id else []
            return keys + ([("model", "civitai", str(ref.model_id))] if ref.model_id else [])
        air = parse_air(source)
    except SourceError:
        return []
    keys = [("model", air.source, air.id)]
    return ([("version", air.source, air.version)] if air.version else []) + keys


def air_key(text: str) -> tuple[str, str, str] | None:
    """What a member's AIR is looked up by: its version when it names one, else its model."""
    try:
        air = parse_air(text)
    except SourceError:
        return None
    return ("version", air.source, air.version) if air.version else ("model", air.source, air.id)


class NameIndex:
    """Finds the registered names closest to a misspelt one.

    Each *term* is a name or a trigger word and points at the name it stands for, so typing
    a LoRA's trigger word suggests the LoRA. Candidates come from shared trigrams (rarest
    first, within a budget), then are ranked by trigram Dice similarity with a bonus for
    prefixes, so a typo never costs a comparison against every name. Postings are compact
    integer arrays: 100,000 names must not add millions of objects for the garbage collector.
    """

    def __init__(self, terms: Iterable[tuple[str, str]]) -> None:
        self._term_keys: list[str] = []
        self._targets: list[str] = []
        postings: dict[str, array[int]] = {}
        for term, target in terms:
            key = name_key(term)
            if not key:
                continue
            index = len(self._term_keys)
            self._term_keys.append(key)
            self._targets.append(target)
            for gram in trigrams(key):
                posting = postings.get(gram)
                if posting is None:
                    posting = postings[gram] = array("I")
                posting.append(index)
        self._postings = postings
        self._sorted_keys = sorted(self._term_keys)
        self._sorted_index = array(
            "I", sorted(range(len(self._term_keys)), key=self._term_keys.__getitem__)
        )

    def __len__(self) -> int:
        return len(self._term_keys)

    def suggest(
        self, text: str, limit: int = 3, accept: Callable[[str], bool] | None = None
    ) -> list[str]:
        """Up to ``limit`` distinct target names, closest first; ``accept`` filters targets."""
        key = name_key(text)
        if not key or not self._term_keys:
            return []
        grams = trigrams(key)
        lists = sorted((self._postings[g] for g in grams if g in self._postings), key=len)
        hits: Counter[int] = Counter()
        counted = 0
        for posting in lists:
            if counted and counted + len(posting) > _POSTINGS_BUDGET:
                break
            hits.update(posting)
            counted += len(posting)
        pool = _CANDIDATES if accept is None else _CANDIDATES * 2
        candidates = {i for i, _ in hits.most_common(pool)}
        # Names that start with what was typed are good guesses even with few shared trigrams.
        start = bisect.bisect_left(self._sorted_keys, key)
        for position in range(start, min(start + 8, len(self._sorted_keys))):
            if not self._sorted_keys[position].startswith(key):
                break
            candidates.add(self._sorted_index[position])
        scored: list[tuple[float, str]] = []
        for i in candidates:
            target = self._targets[i]
            if accept is not None and not accept(target):
                continue
            term = self._term_keys[i]
            term_grams = trigrams(term)
            score = 2 * len(grams & term_grams) / (len(grams) + len(term_grams))
            if term.startswith(key) or key.startswith(term):
                score += 0.2
            scored.append((score, target))
        scored.sort(key=lambda item: (-item[0], item[1]))
        out: list[str] = []
        for _, target in scored:
            if target not in out:
                out.append(target)
                if len(out) == limit:
                    break
        return out


class LoraTable(Mapping[str, LoraEntry]):
    """A server's LoRAs by :func:`name_key`, turned from database rows into entries on first use.

    A server with 100,000 LoRAs should not pay for 100,000 dataclasses on every catalog
    rebuild when a request names three of them.
    """

    def __init__(
        self, items: dict[str, Any], convert: Callable[[Any], LoraEntry] | None = None
    ) -> None:
        self._items = items
        self._convert = convert

    @classmethod
    def from_entries(cls, loras: Iterable[LoraEntry]) -> LoraTable:
        return cls({name_key(lora.name): lora for lora in loras})

    def __getitem__(self, key: str) -> LoraEntry:
        item = self._items[key]
        if isinstance(item, LoraEntry):
            return item
        assert self._convert is not None
        entry = self._items[key] = self._convert(item)
        return entry

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def sources(self) -> Iterator[tuple[str, str]]:
        """``(name key, source)`` of every LoRA that has a source, without building entries."""
        for key, item in list(self._items.items()):
            source = item.source if isinstance(item, LoraEntry) else item["source"]
            if source:
                yield key, source

    def summaries(self) -> Iterator[tuple[str, str, tuple[str, ...]]]:
        """``(name, architecture, trigger words)`` of every LoRA, without building entries."""
        for item in list(self._items.values()):
            if isinstance(item, LoraEntry):
                yield item.name, item.architecture, item.trigger_words
            else:
                yield item["name"], item["architecture"], tuple(json.loads(item["trigger_words"]))


class Catalog:
    """Read-only view of one server: settings, models and LoRAs keyed by :func:`name_key`.

    Entries in ``loras`` carry no description (it can be 10,000 characters and validation
    never needs it); use ``Registry.loras.get`` for the full entry.
    """

    def __init__(
        self,
        guild_id: int,
        settings: ServerSettings,
        models: Iterable[ModelEntry],
        loras: Iterable[LoraEntry] | LoraTable,
        embeddings: Iterable[EmbeddingEntry] = (),
    ) -> None:
        self.guild_id = guild_id
        #: Textual-inversion embeddings by :func:`name_key` (a server has tens, not thousands).
        self.embeddings: Mapping[str, EmbeddingEntry] = {name_key(e.name): e for e in embeddings}
        self.settings = settings
        self.models: Mapping[str, ModelEntry] = {name_key(m.name): m for m in models}
        self.loras: LoraTable = (
            loras if isinstance(loras, LoraTable) else LoraTable.from_entries(loras)
        )
        self._index_lock = threading.Lock()
        self._lora_index_value: NameIndex | None = None
        self._lora_arch: dict[str, str] = {}

    def model(self, name: str) -> ModelEntry | None:
        return self.models.get(name_key(name))

    def loras_by_air(self, text: str) -> list[LoraEntry]:
        """The LoRAs registered with the AIR (or Civitai link) ``text``: the one version it
        names, or every registered version of its model when it names none. Civitai version
        ids are unique site-wide, so ``civitai:1@2`` also finds a source written as a link."""
        wanted = air_key(text)
        if wanted is None:
            return []
        index = self._air_index
        keys = index.get(wanted, ())
        return [self.loras[k] for k in dict.fromkeys(keys) if k in self.loras]

    @cached_property
    def _air_index(self) -> dict[tuple[str, str, str], list[str]]:
        index: dict[tuple[str, str, str], list[str]] = {}
        for key, source in self.loras.sources():
            for part in source_keys(source):
                index.setdefault(part, []).append(key)
        return index

    def lora(self, name: str) -> LoraEntry | None:
        return self.loras.get(name_key(name))

    @property
    def _lora_index(self) -> NameIndex:
        # Built once, possibly from a worker thread (see CatalogCache.get), hence the lock.
        if self._lora_index_value is None:
            with self._index_lock:
                if self._lora_index_value is None:
                    arch: dict[str, str] = {}

                    def terms() -> Iterable[tuple[str, str]]:
                        for name, architecture, words in self.loras.summaries():
                            arch[name] = architecture
                            yield name, name
                            for word in words:
                                yield word, name

                    index = NameIndex(terms())
                    self._lora_arch = arch
                    self._lora_index_value = index
        return self._lora_index_value

    @cached_property
    def _model_index(self) -> NameIndex:
        return NameIndex((m.name, m.name) for m in self.models.values())

    def suggest_loras(
        self, text: str, limit: int = 3, *, architecture: str | None = None
    ) -> list[str]:
        """The closest LoRA names to ``text``, trigger words included.

        With ``architecture``, only LoRAs made for it (or of unknown architecture).
        """
        index = self._lora_index
        if architecture is None:
            return index.suggest(text, limit)
        arch_of = self._lora_arch

        def fits(name: str) -> bool:
            return arch_of.get(name) in (architecture, "unknown")

        return index.suggest(text, limit, accept=fits)

    def suggest_models(self, text: str, limit: int = 3) -> list[str]:
        return self._model_index.suggest(text, limit)

    def warm(self) -> Catalog:
        """Build the suggestion indexes now, so the first typo does not pay for them."""
        _ = self._lora_index, self._model_index
        return self
