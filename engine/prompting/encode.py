"""Prompt and negative through the text encoders, with A1111's meaning.

Each 75-token chunk (see :mod:`engine.prompting.chunks`) goes through the encoder on its own and
the hidden states are concatenated, so a prompt of any length is read whole. Per chunk, as in
A1111's ``sd_hijack_clip`` and ``sd_emphasis`` ("Original"):

- SD 1.5 reads the last layer (after the final LayerNorm); clip skip N reads the hidden state N
  layers from the end and then applies the final LayerNorm.
- SDXL reads the penultimate layer of both encoders (no final norm), concatenated; clip skip is
  ignored, as A1111 does by default (``sdxl_clip_l_skip`` off): the penultimate layer is what
  "clip skip 2" means for Pony and other SDXL models. The pooled embedding is the second
  encoder's projection of the first chunk. An empty SDXL negative is all zeros.
- Emphasis multiplies each token's hidden state by its weight, then rescales the chunk so its
  mean is what it was before (per prompt, so a job's image never depends on its batch mates).
- Embedding vectors replace the token embeddings at their positions (before the transformer).

Prompt and negative are chunked alike. When they need different numbers of chunks, A1111 runs
the UNet for each separately; diffusers batches them, so the shorter is padded and the padding
is masked out of cross-attention (:func:`cross_attention_mask`), which gives the same result.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from engine import arch as _arch
from engine.prompting.chunks import Chunk, ChunkedPrompt, Chunker, EmbeddingWord
from engine.protocol import EngineError, ErrorCode

#: An embedding's vectors per encoder: {"clip_l": (n, 768)} or {"clip_l": ..., "clip_g": ...}.
EmbeddingVectors = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class PromptInfo:
    """What the member is told about a long prompt."""

    tokens: int
    chunks: int
    embeddings_used: tuple[str, ...]


@dataclass
class Conditioning:
    """Everything a diffusers SD/SDXL pipeline call needs from the prompts, plus the padding mask."""

    kwargs: dict[str, torch.Tensor]
    #: Per prompt row (negatives, then prompts): how many leading positions are real.
    negative_lengths: list[int]
    positive_lengths: list[int]
    info: list[PromptInfo] = field(default_factory=list)
    negative_info: list[PromptInfo] = field(default_factory=list)
    #: Whether the pipeline runs classifier-free guidance (CFG > 1): its batch then holds the
    #: negatives first.
    guidance: bool = True
    #: The prompts and negatives as the text encoder read them, one per row, where a runtime
    #: encodes them again beside a picture (Qwen-Image-Edit's encoder reads the picture too).
    texts: tuple[list[str], list[str]] | None = None

    @property
    def needs_mask(self) -> bool:
        return len(set(self.negative_lengths + self.positive_lengths)) > 1

    def mask_for(self, rows: int, length: int, device: Any) -> torch.Tensor:
        """A (rows, length) keep-mask for the UNet batch diffusers builds from these prompts:
        ``[negatives..., prompts...]`` under CFG (or prompts only), each repeated per image."""
        batch = len(self.positive_lengths)
        per_prompt = max(1, rows // (2 * batch if self.guidance else batch))
        lengths = (self.negative_lengths + self.positive_lengths) if self.guidance else self.positive_lengths
        positions = torch.arange(length, device=device)
        mask = torch.stack([positions < n for n in lengths])
        return mask.repeat_interleave(per_prompt, dim=0)


@dataclass
class _Encoder:
    module: Any
    key: str  # "clip_l" or "clip_g"
    pad_id: int
    #: "last" (SD 1.5: last layer + final norm), "penultimate" (SDXL: hidden_states[-2]).
    layer: str
    pooled: bool


def _final_norm(encoder: Any) -> Any:
    norm = getattr(encoder, "final_layer_norm", None)
    if norm is None:  # transformers < 5.6 nests the text model
        norm = encoder.text_model.final_layer_norm
    return norm


class PromptEncoder:
    """Encodes prompts for one loaded pipeline (SD 1.5 or SDXL) with A1111's rules."""

    def __init__(
        self,
        pipe: Any,
        *,
        clip_skip: int = 1,
        embeddings: Mapping[str, EmbeddingVectors] | None = None,
        architecture: str | None = None,
    ) -> None:
        self.pipe = pipe
        self.tokenizer = pipe.tokenizer
        # Which CLIPs read the prompt is the architecture's to say (engine.arch), not "has a
        # text_encoder_2": FLUX's text_encoder_2 is T5. Without a name, the pipeline's class
        # says which architecture it is.
        name = architecture or _arch.from_pipeline_class(type(pipe).__name__)[0]
        spec = _arch.get(name)
        if spec is None or spec.prompt_budget.kind != "clip_chunks":
            raise EngineError(
                ErrorCode.ARCH_MISMATCH,
                f"A1111 CLIP prompt encoding does not apply to {_arch.label(name)} models",
            )
        self.sdxl = "clip_g" in spec.text_encoders
        self.encoders = [_Encoder(pipe.text_encoder, "clip_l", self.tokenizer.eos_token_id, "last", False)]
        if self.sdxl:
            pad = getattr(pipe.tokenizer_2, "pad_token_id", None)
            self.encoders = [
                _Encoder(pipe.text_encoder, "clip_l", self.tokenizer.eos_token_id, "penultimate", False),
                _Encoder(pipe.text_encoder_2, "clip_g", 0 if pad is None else pad, "penultimate", True),
            ]
        layers = int(pipe.text_encoder.config.num_hidden_layers)
        if not isinstance(clip_skip, int) or not 1 <= clip_skip <= layers:
            raise EngineError(
                ErrorCode.INVALID_RECIPE,
                f"clip skip {clip_skip!r} does not fit this text encoder of {layers} layers; use 1 to {layers}",
            )
        self.clip_skip = clip_skip
        self.embeddings = dict(embeddings or {})
        words = [
            EmbeddingWord(name, tuple(self._tokenize([name])[0]), int(next(iter(vectors.values())).shape[0]))
            for name, vectors in self.embeddings.items()
        ]
        # One token's id, not get_vocab(): that copies CLIP's 49408-entry vocabulary into a new
        # dict on every job (about 30 ms here, measured with tests.bench.picture's profile).
        comma = self.tokenizer.convert_tokens_to_ids(",</w>")
        self.chunker = Chunker(
            self._tokenize,
            bos=self.tokenizer.bos_token_id,
            eos=self.tokenizer.eos_token_id,
            comma=None if comma is None or comma == self.tokenizer.unk_token_id else comma,
            words=words,
        )

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]

    def chunk(self, prompt: str) -> ChunkedPrompt:
        return self.chunker.chunk(prompt)

    # -- one prompt ---------------------------------------------------------------------------

    def encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None, PromptInfo]:
        """(hidden states (1, 77·chunks, width), pooled (1, width) or None, info) of one prompt."""
        chunked = self.chunk(prompt)
        per_encoder: list[torch.Tensor] = []
        pooled: torch.Tensor | None = None
        for encoder in self.encoders:
            states = []
            for index, chunk in enumerate(chunked.chunks):
                z, chunk_pooled = self._encode_chunk(encoder, chunk)
                states.append(z)
                if encoder.pooled and index == 0:
                    pooled = chunk_pooled
            per_encoder.append(torch.cat(states, dim=1))
        hidden = torch.cat(per_encoder, dim=-1) if len(per_encoder) > 1 else per_encoder[0]
        info = PromptInfo(chunked.token_count, len(chunked.chunks), chunked.embeddings_used)
        return hidden, pooled, info

    def _encode_chunk(self, encoder: _Encoder, chunk: Chunk) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokens = list(chunk.tokens)
        if encoder.pad_id != self.tokenizer.eos_token_id:
            # OpenCLIP pads with "!" after the end token (A1111's process_tokens does the same).
            end = tokens.index(self.tokenizer.eos_token_id, 1)
            tokens[end + 1 :] = [encoder.pad_id] * (len(tokens) - end - 1)
        module = encoder.module
        device = module.device
        ids = torch.tensor([tokens], device=device)
        with self._embedding_fixes(module, encoder.key, chunk.fixes):
            out = module(ids, output_hidden_states=True)
        if encoder.layer == "penultimate":
            z = out.hidden_states[-2]
        elif self.clip_skip > 1:
            z = _final_norm(module)(out.hidden_states[-self.clip_skip])
        else:
            z = out.last_hidden_state
        pooled = getattr(out, "text_embeds", None) if encoder.pooled else None
        z = z.float()
        weights = torch.tensor([chunk.multipliers], device=device, dtype=torch.float32)
        if bool((weights != 1.0).any()):
            original_mean = z.mean()
            z = z * weights.unsqueeze(-1)
            z = z * (original_mean / z.mean())
        return z, (pooled.float() if pooled is not None else None)

    @contextmanager
    def _embedding_fixes(self, module: Any, key: str, fixes: Sequence[tuple[int, str]]) -> Iterator[None]:
        """Put each embedding's vectors at its positions in the token embeddings (A1111's
        EmbeddingsWithFixes) for one forward pass; nothing stays on the model afterwards."""
        if not fixes:
            yield
            return

        def replace(_module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
            output = output.clone()
            for offset, name in fixes:
                vectors = self.embeddings[name].get(key)
                if vectors is None:
                    continue
                count = min(vectors.shape[0], output.shape[1] - offset)
                output[0, offset : offset + count] = vectors[:count].to(output.dtype)
            return output

        handle = module.get_input_embeddings().register_forward_hook(replace)
        try:
            yield
        finally:
            handle.remove()

    # -- a batch --------------------------------------------------------------------------------

    def conditioning(
        self,
        prompts: Sequence[str],
        negatives: Sequence[str],
        *,
        guidance: bool = True,
        dtype: torch.dtype | None = None,
    ) -> Conditioning:
        """Pipeline keyword arguments for ``len(prompts)`` images' prompts and negatives."""
        pos = [self.encode(p) for p in prompts]
        neg = [self._encode_negative(n) for n in negatives]
        rows = [*neg, *pos]
        length = max(hidden.shape[1] for hidden, _, _ in rows)
        width = rows[0][0].shape[-1]

        def padded(hidden: torch.Tensor) -> torch.Tensor:
            if hidden.shape[1] == length:
                return hidden
            pad = torch.zeros((1, length - hidden.shape[1], width), dtype=hidden.dtype, device=hidden.device)
            return torch.cat([hidden, pad], dim=1)

        target = dtype or self.pipe.unet.dtype
        kwargs = {
            "prompt_embeds": torch.cat([padded(h) for h, _, _ in pos]).to(target),
            "negative_prompt_embeds": torch.cat([padded(h) for h, _, _ in neg]).to(target),
        }
        if self.sdxl:
            kwargs["pooled_prompt_embeds"] = torch.cat([p for _, p, _ in pos]).to(target)  # type: ignore[misc]
            kwargs["negative_pooled_prompt_embeds"] = torch.cat([p for _, p, _ in neg]).to(target)  # type: ignore[misc]
        return Conditioning(
            kwargs=kwargs,
            negative_lengths=[h.shape[1] for h, _, _ in neg],
            positive_lengths=[h.shape[1] for h, _, _ in pos],
            info=[i for _, _, i in pos],
            negative_info=[i for _, _, i in neg],
            guidance=guidance,
        )

    def _encode_negative(self, text: str) -> tuple[torch.Tensor, torch.Tensor | None, PromptInfo]:
        if self.sdxl and not text:
            hidden, pooled, info = self.encode("")
            return torch.zeros_like(hidden), torch.zeros_like(pooled) if pooled is not None else None, info
        return self.encode(text)


@contextmanager
def cross_attention_mask(unet: Any, conditioning: Conditioning) -> Iterator[None]:
    """Mask the padding of the shorter prompt out of the UNet's cross-attention for one call.

    Equivalent to A1111 running cond and uncond separately when their chunk counts differ
    (``pad_cond_uncond`` off, its default). With equal lengths nothing is installed.
    """
    if not conditioning.needs_mask:
        yield
        return

    def add_mask(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        hidden = kwargs.get("encoder_hidden_states")
        if hidden is None and len(args) > 2:
            hidden = args[2]
        if hidden is not None:
            kwargs["encoder_attention_mask"] = conditioning.mask_for(hidden.shape[0], hidden.shape[1], hidden.device)
        return args, kwargs

    handle = unet.register_forward_pre_hook(add_mask, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
