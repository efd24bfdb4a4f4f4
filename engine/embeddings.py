"""Textual-inversion embeddings: read from safetensors, checked against the model's encoders.

A1111 keeps embeddings out of the model: the prompt names one and its vectors take the place
of token embeddings for that pass only (see :mod:`engine.prompting.encode`). So do we: the
tokenizer and the embedding matrix of a cached model are never changed, and two jobs with
different embeddings share the loaded model safely. Only ``.safetensors`` are read; ``.pt``
embeddings are pickles and are refused by path before reaching here.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from engine.classify import BUNDLE_PREFIX
from engine.protocol import EngineError, ErrorCode, FileInfo, architecture_label

#: Embedding files kept in memory (each is a few kilobytes).
CACHE_MAX = 256


def _vectors_of(tensors: dict[str, Any]) -> dict[str, Any]:
    """{"clip_l": ..., "clip_g": ...} from an A1111/kohya embedding's keys."""
    if "clip_l" in tensors or "clip_g" in tensors:
        return {k: tensors[k] for k in ("clip_l", "clip_g") if k in tensors}
    if len(tensors) == 1:
        (value,) = tensors.values()
        return {"clip_l": value if value.ndim == 2 else value.unsqueeze(0)}
    raise EngineError(ErrorCode.CORRUPT_FILE, "the file is not a textual-inversion embedding")


class EmbeddingStore:
    """Loaded embedding vectors by file hash, LRU-bounded; thread-safe."""

    def __init__(self) -> None:
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def vectors(self, path: Path, info: FileInfo) -> dict[str, Any]:
        with self._lock:
            cached = self._cache.get(info.sha256)
            if cached is not None:
                self._cache.move_to_end(info.sha256)
                return cached
        from safetensors.torch import load_file

        try:
            vectors = _vectors_of(load_file(str(path)))
        except EngineError as exc:
            raise EngineError(exc.code, f"'{path.name}': {exc.message}") from exc
        with self._lock:
            self._cache[info.sha256] = vectors
            while len(self._cache) > CACHE_MAX:
                self._cache.popitem(last=False)
        return vectors

    def bundled(self, path: Path, info: FileInfo) -> dict[str, dict[str, Any]]:
        """Embeddings a LoRA carries (OneTrainer ``bundle_emb.<name>.clip_l``), by name."""
        if not info.bundled_embeddings:
            return {}
        from safetensors import safe_open

        found: dict[str, dict[str, Any]] = {}
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                if not key.startswith(BUNDLE_PREFIX):
                    continue
                name, _, encoder = key[len(BUNDLE_PREFIX) :].rpartition(".")
                if encoder in ("clip_l", "clip_g") and name:
                    found.setdefault(name, {})[encoder] = handle.get_tensor(key)
        return found


def check_fits(name: str, vectors: dict[str, Any], pipe: Any, model_arch: str, model_name: str) -> None:
    """Refuse an embedding whose vectors do not fit the model's text encoders, naming both."""
    widths = {"clip_l": int(pipe.text_encoder.config.hidden_size)}
    if getattr(pipe, "text_encoder_2", None) is not None:
        widths["clip_g"] = int(pipe.text_encoder_2.config.hidden_size)
    expected = set(widths)
    given = {k: int(v.shape[-1]) for k, v in vectors.items()}
    if set(given) != expected or any(given[k] != widths[k] for k in expected):
        made_for = "SDXL" if set(given) == {"clip_l", "clip_g"} else "SD 1.5 (or SD 2)"
        raise EngineError(
            ErrorCode.ARCH_MISMATCH,
            f"embedding '{name}' was made for {made_for} ({', '.join(f'{k} {w}' for k, w in given.items())} wide) "
            f"but the model '{model_name}' is {architecture_label(model_arch)} "
            f"({', '.join(f'{k} {w}' for k, w in widths.items())}): use an embedding made for it",
        )


def resolve_embedding_files(recipe: Any, root: Path, inspect: Any) -> list[tuple[Any, Path, FileInfo]]:
    """(ref, path, info) of each embedding a recipe names, confined to ``root`` and checked
    (kind, sha256) before anything loads, so a wrong file is refused at once."""
    from engine.paths import resolve_within

    resolved = []
    for ref in recipe.embeddings:
        path = resolve_within(root, ref.file)
        info = inspect(path)
        if info.kind != "embedding":
            raise EngineError(
                ErrorCode.INVALID_RECIPE,
                f"'{ref.file}' is not a textual-inversion embedding (it reads as {info.kind}); "
                "re-register it with the right command",
            )
        if ref.sha256 and ref.sha256.lower() != info.sha256:
            raise EngineError(
                ErrorCode.UNKNOWN_FILE,
                f"embedding '{ref.name}' ({ref.file}) changed on disk since it was registered; re-register it",
            )
        resolved.append((ref, path, info))
    return resolved
