"""Cutting a weighted prompt into CLIP's 77-token windows the way A1111 does.

CLIP reads 77 tokens: a start token, 75 prompt tokens, an end token. A1111 encodes a prompt of
any length as consecutive 75-token chunks (``modules/sd_hijack_clip.tokenize_line``):

- ``BREAK`` ends the current chunk at once (padding it with end tokens);
- when a chunk is full and the last comma is at most ``backtrack`` (20) tokens back, the tokens
  after that comma move to the next chunk, so phrases are not split across chunks;
- a textual-inversion embedding named in the prompt occupies as many positions as it has
  vectors and never straddles two chunks;
- every chunk is padded with end tokens and framed by start/end.

Torch-free and tokenizer-agnostic (``tokenize`` turns texts into ids without special tokens),
so the engine runs it with the model's own tokenizer and the bot counts tokens with the same
rules before a job is queued.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from engine.prompting.attention import is_break, parse_attention

CHUNK_LENGTH = 75
#: A1111's ``comma_padding_backtrack`` default.
COMMA_BACKTRACK = 20
#: Placeholder id at an embedding's positions (A1111 uses 0; the vectors replace it).
EMBEDDING_PLACEHOLDER = 0


@dataclass(frozen=True)
class EmbeddingWord:
    """An embedding as the prompt calls it: the ids of its name and how many vectors it has."""

    name: str
    ids: tuple[int, ...]
    vectors: int


@dataclass
class Chunk:
    """77 token ids, a weight for each, and where embeddings' vectors go (offset, name)."""

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ChunkedPrompt:
    chunks: list[Chunk]
    #: Prompt tokens used, as A1111 counts them (the last chunk's padding not included).
    token_count: int
    #: Names of the embeddings the prompt called, in order of first use.
    embeddings_used: tuple[str, ...]


class Chunker:
    """Chunks prompts for one tokenizer; ``words`` are the embeddings the prompt may call."""

    def __init__(
        self,
        tokenize: Callable[[list[str]], list[list[int]]],
        *,
        bos: int,
        eos: int,
        comma: int | None,
        words: Sequence[EmbeddingWord] = (),
        backtrack: int = COMMA_BACKTRACK,
    ) -> None:
        self.tokenize = tokenize
        self.bos, self.eos, self.comma = bos, eos, comma
        self.backtrack = backtrack
        # Longest name first among those starting with the same id, as A1111 looks them up.
        self._by_first: dict[int, list[EmbeddingWord]] = {}
        for word in words:
            if word.ids:
                self._by_first.setdefault(word.ids[0], []).append(word)
        for candidates in self._by_first.values():
            candidates.sort(key=lambda w: len(w.ids), reverse=True)

    def empty_chunk(self) -> Chunk:
        return Chunk([self.bos] + [self.eos] * (CHUNK_LENGTH + 1), [1.0] * (CHUNK_LENGTH + 2))

    def _embedding_at(self, tokens: list[int], position: int) -> EmbeddingWord | None:
        for word in self._by_first.get(tokens[position], ()):
            if tuple(tokens[position : position + len(word.ids)]) == word.ids:
                return word
        return None

    def chunk(self, prompt: str) -> ChunkedPrompt:
        fragments = parse_attention(prompt)
        tokenized = self.tokenize([text for text, _ in fragments])
        chunks: list[Chunk] = []
        chunk = Chunk()
        token_count = 0
        last_comma = -1
        used: list[str] = []

        def close(is_last: bool = False) -> None:
            nonlocal chunk, token_count, last_comma
            token_count += len(chunk.tokens) if is_last else CHUNK_LENGTH
            missing = CHUNK_LENGTH - len(chunk.tokens)
            if missing > 0:
                chunk.tokens += [self.eos] * missing
                chunk.multipliers += [1.0] * missing
            chunk.tokens = [self.bos, *chunk.tokens, self.eos]
            chunk.multipliers = [1.0, *chunk.multipliers, 1.0]
            chunk.fixes = [(offset + 1, name) for offset, name in chunk.fixes]
            last_comma = -1
            chunks.append(chunk)
            chunk = Chunk()

        for tokens, fragment in zip(tokenized, fragments, strict=True):
            if is_break(fragment):
                close()
                continue
            weight = fragment[1]
            position = 0
            while position < len(tokens):
                token = tokens[position]
                if token == self.comma:
                    last_comma = len(chunk.tokens)
                elif (
                    self.backtrack
                    and len(chunk.tokens) == CHUNK_LENGTH
                    and last_comma != -1
                    and len(chunk.tokens) - last_comma <= self.backtrack
                ):
                    cut = last_comma + 1
                    # An embedding after the comma moves with its positions (A1111 leaves its
                    # vectors behind on the old chunk's padding, a bug not worth copying).
                    moved_tokens, moved_weights = chunk.tokens[cut:], chunk.multipliers[cut:]
                    moved_fixes = [(o - cut, n) for o, n in chunk.fixes if o >= cut]
                    chunk.tokens, chunk.multipliers = chunk.tokens[:cut], chunk.multipliers[:cut]
                    chunk.fixes = [(o, n) for o, n in chunk.fixes if o < cut]
                    close()
                    chunk.tokens, chunk.multipliers, chunk.fixes = moved_tokens, moved_weights, moved_fixes
                if len(chunk.tokens) == CHUNK_LENGTH:
                    close()
                word = self._embedding_at(tokens, position)
                if word is None:
                    chunk.tokens.append(token)
                    chunk.multipliers.append(weight)
                    position += 1
                    continue
                if len(chunk.tokens) + word.vectors > CHUNK_LENGTH:
                    close()
                chunk.fixes.append((len(chunk.tokens), word.name))
                chunk.tokens += [EMBEDDING_PLACEHOLDER] * word.vectors
                chunk.multipliers += [weight] * word.vectors
                position += len(word.ids)
                if word.name not in used:
                    used.append(word.name)
        if chunk.tokens or not chunks:
            close(is_last=True)
        return ChunkedPrompt(chunks, token_count, tuple(used))


def chunk_count(token_count: int) -> int:
    """How many chunks a prompt of ``token_count`` tokens needs without BREAKs (at least one)."""
    return max(1, -(-token_count // CHUNK_LENGTH))
