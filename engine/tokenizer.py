"""The CLIP tokenizer, rebuilt offline from the BPE merges that ship in ``data/clip``.

Stable Diffusion's tokenizers are the OpenAI CLIP BPE. Hugging Face's ``vocab.json`` and
``merges.txt`` are derived from open_clip's ``bpe_simple_vocab_16e6.txt.gz`` by a fixed
procedure (the same as open_clip's ``SimpleTokenizer``), so we derive them here instead
of downloading them: the ids match the real ones, and real checkpoints work with them.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

from engine.shipped_data import data_path

BPE_FILE = data_path("clip", "bpe_simple_vocab_16e6.txt.gz")
VOCAB_SIZE = 49408
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
BOS_ID = 49406
EOS_ID = 49407
MAX_LENGTH = 77
#: The merges used by CLIP: the gz file holds more lines than the model was trained with.
_MERGE_COUNT = 49152 - 256 - 2


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """Printable stand-ins for every byte, so BPE never sees whitespace or control bytes."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


@functools.cache
def _vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    lines = gzip.decompress(BPE_FILE.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : _MERGE_COUNT + 1]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise RuntimeError(f"{BPE_FILE} gave {len(vocab)} tokens, expected {VOCAB_SIZE}: is it the CLIP BPE file?")
    return vocab, merges


def write_tokenizer(folder: Path, *, pad_token: str = EOS_TOKEN) -> Path:
    """Write a ``CLIPTokenizer.from_pretrained``-ready folder (idempotent).

    SD 1.5 and SDXL's first tokenizer pad with ``<|endoftext|>``; SDXL's second pads
    with ``!`` (id 0), which changes its pooled embedding, so the caller chooses.
    """
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _vocab_and_merges()
    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "special_tokens_map.json": json.dumps(
            {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": pad_token}
        ),
        "tokenizer_config.json": json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": MAX_LENGTH,
                "bos_token": BOS_TOKEN,
                "eos_token": EOS_TOKEN,
                "unk_token": EOS_TOKEN,
                "pad_token": pad_token,
                "do_lower_case": True,
            },
            indent=2,
        ),
    }
    for name, text in files.items():
        path = folder / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
    return folder


def load_tokenizer(folder: Path):  # -> transformers.CLIPTokenizer (lazy import keeps this module light)
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True, model_max_length=MAX_LENGTH)


# --- a pure-Python CLIP tokenizer -----------------------------------------------------------

import re as _re  # noqa: E402 - kept beside the one piece that needs it
import unicodedata as _unicodedata  # noqa: E402

# The CLIP pre-tokenizer pattern with stdlib classes: [^\W\d_] for \p{L} (letters), \d for \p{N}.
_WORDS = _re.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+",
    _re.IGNORECASE,
)


class ClipBpe:
    """CLIP's BPE in plain Python, for the bot, which counts prompt tokens without transformers.

    The engine encodes with the model's own tokenizer; this gives the same ids for ordinary
    text (a test compares the two), and at worst a token or two off on rare Unicode, where the
    stdlib ``re`` classes differ slightly from ``\\p{L}``/``\\p{N}``. Small, because the
    alternative is a Rust tokenizer or transformers as a bot dependency for one count.
    """

    def __init__(self) -> None:
        vocab, merges = _vocab_and_merges()
        self.vocab = vocab
        self.ranks = {tuple(m.split()): i for i, m in enumerate(merges)}
        self.byte_chars = bytes_to_unicode()
        self._cache: dict[str, list[int]] = {}
        self.comma = vocab[",</w>"]

    def _bpe(self, word: str) -> list[int]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:], strict=False))]
            rank, index = min(pairs)
            if rank == 1 << 30:
                break
            first, second = parts[index], parts[index + 1]
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i < len(parts) - 1 and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = [self.vocab[p] for p in parts if p in self.vocab]
        if len(self._cache) < 50_000:
            self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end tokens (normalised as the HF tokenizer does)."""
        text = " ".join(_unicodedata.normalize("NFC", text).split()).lower()
        ids: list[int] = []
        for word in _WORDS.findall(text):
            if word in (BOS_TOKEN, EOS_TOKEN):
                ids.append(self.vocab[word])
                continue
            mapped = "".join(self.byte_chars[b] for b in word.encode("utf-8"))
            ids.extend(self._bpe(mapped))
        return ids

    def __call__(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]


@functools.cache
def clip_bpe() -> ClipBpe:
    return ClipBpe()
