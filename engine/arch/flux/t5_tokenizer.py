"""The T5 tokenizer of FLUX.1's second text encoder, from the vocabulary shipped in ``data/t5``.

Nothing is downloaded: ``data/t5/tokenizer.json.gz`` is Google's T5 v1.1 SentencePiece
vocabulary (Apache-2.0, see ``data/t5/NOTICE``) in the ``tokenizers`` JSON form, which
``T5TokenizerFast`` reads without the sentencepiece package. An operator may put another
``tokenizer.json`` next to a T5 file (``<name>.tokenizer.json``) and it is used instead.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path
from typing import Any

from engine.shipped_data import data_path

VOCAB_FILE = data_path("t5", "tokenizer.json.gz")
VOCAB_SIZE = 32100  # 32,000 pieces + 100 sentinels; the model's embedding has 32,128 rows
PAD_ID = 0
EOS_ID = 1


@functools.cache
def _shipped_json() -> str:
    return gzip.decompress(VOCAB_FILE.read_bytes()).decode("utf-8")


def tokenizer_beside(weights: Path) -> Path | None:
    """An operator's own ``tokenizer.json`` for a T5 file, if one sits next to it."""
    for candidate in (weights.with_name(weights.stem + ".tokenizer.json"), weights.with_name("tokenizer.json")):
        if candidate.is_file():
            return candidate
    return None


def load_t5_tokenizer(override: Path | None = None, *, max_length: int = 512) -> Any:
    """A ``T5TokenizerFast`` over the shipped vocabulary (or ``override``, a tokenizer.json)."""
    from tokenizers import Tokenizer
    from transformers import T5TokenizerFast

    text = override.read_text(encoding="utf-8") if override is not None else _shipped_json()
    backend = Tokenizer.from_str(text)
    return T5TokenizerFast(
        tokenizer_object=backend,
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_ids=0,  # the sentinels are already in the vocabulary
        model_max_length=max_length,
    )


def write_t5_tokenizer(folder: Path, *, max_length: int = 512) -> Path:
    """A ``tokenizer_2`` folder ``FluxPipeline.from_pretrained`` can read offline."""
    folder.mkdir(parents=True, exist_ok=True)
    load_t5_tokenizer(max_length=max_length).save_pretrained(str(folder))
    return folder
