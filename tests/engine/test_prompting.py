"""Prompt meaning checked against A1111's algorithm on stated cases.

The parser cases are A1111's own doctests (modules/prompt_parser.py). The encoder cases are
computed here directly from the text encoder, step by step as A1111's sd_hijack_clip and
sd_emphasis describe them, on the tiny models with a final LayerNorm that is not the identity
(with weight 1 and bias 0 every chunk's mean is ~0 and the mean restore would divide noise by
noise, see reference.md).
"""

from __future__ import annotations

import pytest
import torch

from engine.prompting.attention import parse_attention
from engine.prompting.chunks import Chunker, EmbeddingWord
from engine.tokenizer import BOS_ID, EOS_ID, clip_bpe


def test_a1111_parser_doctests() -> None:
    assert parse_attention("normal text") == [("normal text", 1.0)]
    assert parse_attention("an (important) word") == [("an ", 1.0), ("important", 1.1), (" word", 1.0)]
    assert parse_attention("(unbalanced") == [("unbalanced", 1.1)]
    assert parse_attention("\\(literal\\]") == [("(literal]", 1.0)]
    assert parse_attention("(unnecessary)(parens)") == [("unnecessaryparens", 1.1)]
    got = parse_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
    expected = [
        ("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1),
        ("hill", 0.55), (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1),
    ]  # fmt: skip
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


def test_break_and_de_emphasis() -> None:
    assert parse_attention("a BREAK b") == [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]
    assert parse_attention("[x]") == [("x", pytest.approx(1 / 1.1))]
    assert parse_attention("(x:0.5)") == [("x", 0.5)]


def _chunker(words=()) -> Chunker:
    bpe = clip_bpe()
    return Chunker(bpe, bos=BOS_ID, eos=EOS_ID, comma=bpe.comma, words=words)


def test_a_200_token_prompt_is_three_chunks_cut_after_commas() -> None:
    # "red cat," is three tokens; 67 of them are 201 tokens.
    prompt = " ".join(["red cat,"] * 67)
    chunked = _chunker().chunk(prompt)
    assert len(chunked.chunks) == 3
    assert all(len(c.tokens) == 77 and c.tokens[0] == BOS_ID and c.tokens[-1] == EOS_ID for c in chunked.chunks)
    comma = clip_bpe().comma
    # 75 is a multiple of 3, so the first chunk ends exactly on a comma; nothing is lost.
    body = [t for c in chunked.chunks for t in c.tokens[1:-1] if t != EOS_ID]
    assert body == clip_bpe().encode(prompt)
    assert chunked.chunks[0].tokens[75] == comma
    assert chunked.token_count == 75 + 75 + 51


def test_comma_backtrack_moves_the_phrase_after_the_last_comma() -> None:
    # 70 single-token words, a comma, then 10 more words: the chunk fills at 75 inside the
    # second phrase; its start (after the comma, 5 tokens back) moves to the next chunk.
    prompt = " ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10)
    chunked = _chunker().chunk(prompt)
    first, second = chunked.chunks
    cat, dog = clip_bpe().encode("cat dog")
    assert first.tokens[1:72] == [cat] * 70 + [clip_bpe().comma]
    assert first.tokens[72:] == [EOS_ID] * 5
    assert second.tokens[1:11] == [dog] * 10


def test_break_starts_a_new_chunk_and_weights_follow_tokens() -> None:
    chunked = _chunker().chunk("a (red:1.5) car BREAK blue sky")
    assert len(chunked.chunks) == 2
    red = clip_bpe().encode("red")[0]
    first = chunked.chunks[0]
    assert first.multipliers[first.tokens.index(red)] == 1.5
    assert chunked.chunks[1].tokens[1:3] == clip_bpe().encode("blue sky")


def test_embeddings_take_their_vector_count_and_never_straddle_chunks() -> None:
    word = EmbeddingWord("easynegative", tuple(clip_bpe().encode("easynegative")), vectors=8)
    chunked = _chunker([word]).chunk(" ".join(["cat"] * 70) + " EasyNegative")
    assert chunked.embeddings_used == ("easynegative",)
    first, second = chunked.chunks
    assert first.fixes == [] and second.fixes == [(1, "easynegative")]
    assert second.tokens[1:9] == [0] * 8


# --- encoders -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd15_pipe(demo_assets):
    from engine.pipelines import load_pipeline

    pipe, _ = load_pipeline(demo_assets.model_root / demo_assets.models["sd15"])
    norm = pipe.text_encoder.final_layer_norm
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(norm.weight.shape, generator=generator))
        norm.bias.copy_(0.5 + 0.3 * torch.randn(norm.bias.shape, generator=generator))
    return pipe


@pytest.fixture(scope="module")
def sdxl_pipe(demo_assets):
    from engine.pipelines import load_pipeline

    pipe, _ = load_pipeline(demo_assets.model_root / demo_assets.models["sdxl"])
    return pipe


def _ids(text: str) -> list[int]:
    body = clip_bpe().encode(text)
    return [BOS_ID, *body, *([EOS_ID] * (76 - len(body)))]


@torch.inference_mode()
def test_a_plain_prompt_matches_diffusers_own_encoding(sd15_pipe, sdxl_pipe) -> None:
    from engine.prompting.encode import PromptEncoder

    for pipe in (sd15_pipe, sdxl_pipe):
        cond = PromptEncoder(pipe).conditioning(["a red cat on a hill"], ["blurry"])
        reference = pipe.encode_prompt("a red cat on a hill", device="cpu", num_images_per_prompt=1,
                                       do_classifier_free_guidance=True, negative_prompt="blurry")  # fmt: skip
        torch.testing.assert_close(cond.kwargs["prompt_embeds"], reference[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(cond.kwargs["negative_prompt_embeds"], reference[1], rtol=0, atol=1e-6)
        if pipe is sdxl_pipe:
            torch.testing.assert_close(cond.kwargs["pooled_prompt_embeds"], reference[2], rtol=0, atol=1e-6)


@torch.inference_mode()
def test_emphasis_scales_tokens_and_restores_the_chunk_mean(sd15_pipe) -> None:
    from engine.prompting.encode import PromptEncoder

    hidden, _, _ = PromptEncoder(sd15_pipe).encode("a (red:1.5) [car]")
    ids = torch.tensor([_ids("a red car")])
    z = sd15_pipe.text_encoder(ids).last_hidden_state.float()
    weights = torch.ones(77)
    weights[2], weights[3] = 1.5, 1 / 1.1
    expected = z * weights[None, :, None]
    expected = expected * (z.mean() / expected.mean())
    torch.testing.assert_close(hidden, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(hidden, z, atol=1e-3)


@torch.inference_mode()
def test_clip_skip_2_reads_the_penultimate_layer_through_the_final_norm(sd15_pipe) -> None:
    from engine.prompting.encode import PromptEncoder

    hidden, _, _ = PromptEncoder(sd15_pipe, clip_skip=2).encode("a red cat")
    out = sd15_pipe.text_encoder(torch.tensor([_ids("a red cat")]), output_hidden_states=True)
    expected = sd15_pipe.text_encoder.final_layer_norm(out.hidden_states[-2])
    torch.testing.assert_close(hidden, expected.float(), rtol=0, atol=1e-6)
    assert not torch.allclose(hidden, out.last_hidden_state, atol=1e-3)


@torch.inference_mode()
def test_long_prompts_concatenate_chunks_and_sdxl_pools_the_first(sdxl_pipe) -> None:
    from engine.prompting.encode import PromptEncoder

    prompt = " ".join(["red cat,"] * 67)  # 201 tokens, 3 chunks
    encoder = PromptEncoder(sdxl_pipe)
    hidden, pooled, info = encoder.encode(prompt)
    assert (hidden.shape[1], info.chunks, info.tokens) == (231, 3, 201)
    chunks = encoder.chunk(prompt).chunks
    for index, chunk in enumerate(chunks):
        ids_l = torch.tensor([chunk.tokens])
        end = chunk.tokens.index(EOS_ID, 1)
        ids_g = torch.tensor([chunk.tokens[: end + 1] + [0] * (76 - end)])
        out_l = sdxl_pipe.text_encoder(ids_l, output_hidden_states=True)
        out_g = sdxl_pipe.text_encoder_2(ids_g, output_hidden_states=True)
        expected = torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2]], dim=-1)
        torch.testing.assert_close(hidden[:, 77 * index : 77 * (index + 1)], expected.float(), rtol=0, atol=1e-6)
        if index == 0:
            torch.testing.assert_close(pooled, out_g.text_embeds.float(), rtol=0, atol=1e-6)
    # Clip skip is ignored on SDXL, as A1111 does by default.
    torch.testing.assert_close(PromptEncoder(sdxl_pipe, clip_skip=2).encode(prompt)[0], hidden)


@torch.inference_mode()
def test_an_empty_sdxl_negative_is_zero_and_lengths_are_masked(sdxl_pipe) -> None:
    from engine.prompting.encode import PromptEncoder, cross_attention_mask

    empty = PromptEncoder(sdxl_pipe).conditioning(["a cat"], [""])
    assert empty.kwargs["negative_prompt_embeds"].abs().max() == 0
    assert empty.kwargs["negative_pooled_prompt_embeds"].abs().max() == 0
    cond = PromptEncoder(sdxl_pipe).conditioning([" ".join(["red cat,"] * 30)], ["blurry, lowres"])
    assert (cond.positive_lengths, cond.negative_lengths) == ([154], [77])
    unet = sdxl_pipe.unet
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    added = {"text_embeds": torch.zeros(2, 32), "time_ids": torch.zeros(2, 6)}
    batch = torch.cat([cond.kwargs["negative_prompt_embeds"], cond.kwargs["prompt_embeds"]])
    with cross_attention_mask(unet, cond):
        masked = unet(torch.cat([latents] * 2), 10, encoder_hidden_states=batch, added_cond_kwargs=added).sample
    # A1111 runs the shorter uncond on its own 77 positions: the padded, masked row is the same.
    alone = unet(latents, 10, encoder_hidden_states=batch[:1, :77],
                 added_cond_kwargs={k: v[:1] for k, v in added.items()}).sample  # fmt: skip
    torch.testing.assert_close(masked[:1], alone, rtol=1e-4, atol=1e-5)
    unmasked = unet(torch.cat([latents] * 2), 10, encoder_hidden_states=batch, added_cond_kwargs=added).sample
    assert not torch.allclose(unmasked[:1], alone, atol=1e-4)


@torch.inference_mode()
def test_embedding_vectors_replace_the_token_embeddings_at_their_positions(sd15_pipe) -> None:
    from engine.prompting.encode import PromptEncoder

    vectors = torch.randn(3, sd15_pipe.text_encoder.config.hidden_size)
    encoder = PromptEncoder(sd15_pipe, embeddings={"mystyle": {"clip_l": vectors}})
    seen: list[torch.Tensor] = []
    hook = sd15_pipe.text_encoder.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with_embedding, _, info = encoder.encode("a cat, mystyle")
    finally:
        hook.remove()
    assert info.embeddings_used == ("mystyle",)
    plain, _, _ = PromptEncoder(sd15_pipe).encode("a cat, mystyle")
    assert not torch.allclose(with_embedding, plain, atol=1e-4)
    # The hook saw the embedding layer's own output; the encoder replaced positions 4..6 after it.
    chunk = encoder.chunk("a cat, mystyle").chunks[0]
    assert chunk.fixes == [(4, "mystyle")] and chunk.tokens[4:7] == [0, 0, 0]
    assert seen and seen[0].shape[1] == 77
