"""Qwen2.5-VL's processor for the edit models: the picture as vision patches beside the prompt's tokens.

Written here rather than loaded with ``Qwen2VLProcessor.from_pretrained`` because transformers 5
builds that processor's video processor eagerly, and video processors need torchvision, which
this engine does not depend on (huggingface/transformers#48558): without it neither
``from_pretrained`` nor the constructor works, even for pictures alone. This subclass is the
same processor without the video half (its ``__call__`` skips a processor it does not have);
the image processor and tokenizer are loaded from the repository's ``processor/`` folder, local
files only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoImageProcessor, AutoTokenizer, Qwen2VLProcessor
from transformers.processing_utils import ProcessorMixin

#: What a ``processor/`` folder holds: the image processor's config (the tokenizer beside it).
MARKER = "preprocessor_config.json"


class PictureProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` for pictures and text only (no video processor)."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = getattr(tokenizer, "image_token_id", None) or tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = getattr(tokenizer, "video_token_id", None) or tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def processor_from_folder(folder: Path) -> PictureProcessor:
    return PictureProcessor(AutoImageProcessor.from_pretrained(str(folder), local_files_only=True),
                            AutoTokenizer.from_pretrained(str(folder), local_files_only=True))  # fmt: skip


__all__ = ["MARKER", "PictureProcessor", "processor_from_folder"]
