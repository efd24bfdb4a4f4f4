"""Input images the engine holds for image-to-image jobs, by sha256 (``POST /inputs``).

The bot keeps the lasting copy (its data folder, under its own size and age limits); the
engine only needs an input from its upload until the job that names it has run, and a bot
sends it again with every (re)submission. So this is a plain bounded memory cache, least
recently used dropped first: the engine never grows with the inputs it has seen. Thread-safe:
the HTTP server puts, the generator's worker thread gets.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from engine.protocol import EngineError, ErrorCode
from engine.recipe.picture import MAX_BYTES, PictureError, check_picture

#: Bytes of inputs held at most (a queue's worth of large inputs).
MAX_HELD_BYTES = 512 * 1024 * 1024


class InputStore:
    def __init__(self, max_bytes: int = MAX_HELD_BYTES) -> None:
        self.max_bytes = max_bytes
        self._held: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, data: bytes) -> str:
        """Check ``data`` (format, pixel count, decodable) and hold it; its sha256."""
        if len(data) > MAX_BYTES:
            raise EngineError(ErrorCode.INVALID_RECIPE, f"an input image may have at most {MAX_BYTES} bytes")
        try:
            check_picture(data, "the input image")
        except PictureError as exc:
            raise EngineError(ErrorCode.INVALID_RECIPE, str(exc)) from exc
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            if digest in self._held:
                self._held.move_to_end(digest)
                return digest
            self._held[digest] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes and len(self._held) > 1:
                _, dropped = self._held.popitem(last=False)
                self._bytes -= len(dropped)
        return digest

    def get(self, digest: str) -> bytes | None:
        with self._lock:
            data = self._held.get(digest.lower())
            if data is not None:
                self._held.move_to_end(digest.lower())
            return data

    def holds(self, digest: str) -> bool:
        with self._lock:
            return digest.lower() in self._held


__all__ = ["MAX_HELD_BYTES", "InputStore"]
