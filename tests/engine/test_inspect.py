"""Header inspection: what a file is, its hashes, and which files are refused unread."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from engine import inspect as inspection
from engine.inspect import inspect_file, read_header
from engine.protocol import EngineError, ErrorCode


def _refusal(path: Path) -> EngineError:
    with pytest.raises(EngineError) as caught:
        inspect_file(path)
    return caught.value


def _a1111_hash(path: Path) -> str:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + n :]).hexdigest()[:12]


def _kohya_pair(name: str, rank: int, fan_in: int, fan_out: int) -> dict[str, np.ndarray]:
    return {
        f"{name}.lora_down.weight": np.ones((rank, fan_in), np.float16),
        f"{name}.lora_up.weight": np.ones((fan_out, rank), np.float16),
        f"{name}.alpha": np.array(rank / 2, np.float16),
    }


# --- real-size key layouts, written here ------------------------------------------------


def test_real_sd15_kohya_lora_by_context_width(tmp_path: Path) -> None:
    state = _kohya_pair(
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 16, 768, 320
    )
    path = tmp_path / "style.safetensors"
    save_file(state, str(path), metadata={"ss_network_alpha": "99"})
    info = inspect_file(path)
    assert (info.kind, info.architecture, info.key_format) == ("lora", "sd15", "kohya")
    assert info.rank == 16
    assert info.alpha == 8.0  # the tensor wins over the metadata
    assert info.has_text_encoder is False


def test_real_sdxl_lora_by_context_width_without_te2(tmp_path: Path) -> None:
    state = _kohya_pair("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", 32, 2048, 640)
    path = tmp_path / "xl.safetensors"
    save_file(state, str(path))
    info = inspect_file(path)
    assert (info.architecture, info.rank, info.alpha) == ("sdxl", 32, 16.0)


@pytest.mark.parametrize(
    ("key", "architecture"),
    [
        ("lora_unet_double_blocks_0_img_attn_qkv", "flux"),
        ("lora_unet_joint_blocks_0_x_block_attn_qkv", "sd3"),
        ("lora_te2_text_model_encoder_layers_0_mlp_fc1", "sdxl"),
    ],
)
def test_architecture_from_key_names(tmp_path: Path, key: str, architecture: str) -> None:
    path = tmp_path / "x.safetensors"
    save_file(_kohya_pair(key, 4, 64, 64), str(path))
    assert inspect_file(path).architecture == architecture


def test_peft_keys_and_alpha_from_adapter_metadata(tmp_path: Path) -> None:
    prefix = "base_model.model.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    state = {
        f"{prefix}.lora_A.weight": np.zeros((8, 768), np.float32),
        f"{prefix}.lora_B.weight": np.zeros((640, 8), np.float32),
    }
    path = tmp_path / "peft.safetensors"
    metadata = {"lora_adapter_metadata": json.dumps({"unet": {"r": 8, "lora_alpha": 4}})}
    save_file(state, str(path), metadata=metadata)
    info = inspect_file(path)
    assert (info.key_format, info.architecture, info.rank, info.alpha) == ("peft", "sd15", 8, 4.0)


def test_real_checkpoints_by_component_prefixes(tmp_path: Path) -> None:
    unet_key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    sd15 = tmp_path / "sd15.safetensors"
    save_file(
        {
            unet_key: np.zeros((320, 768), np.float16),
            "cond_stage_model.transformer.text_model.final_layer_norm.weight": np.zeros(768),
        },
        str(sd15),
    )
    sdxl = tmp_path / "sdxl.safetensors"
    save_file(
        {
            "model.diffusion_model.label_emb.0.0.weight": np.zeros((4, 4), np.float16),
            "conditioner.embedders.1.model.ln_final.weight": np.zeros(4, np.float16),
        },
        str(sdxl),
    )
    assert (inspect_file(sd15).kind, inspect_file(sd15).architecture) == ("checkpoint", "sd15")
    assert (inspect_file(sdxl).kind, inspect_file(sdxl).architecture) == ("checkpoint", "sdxl")


def test_trigger_words_are_summed_ordered_and_deduplicated(tmp_path: Path) -> None:
    frequency = {"5_set_a": {"cat": 3, " Dog ": 5, "hat": 1}, "3_set_b": {"dog": 2, "cat": 3}}
    path = tmp_path / "t.safetensors"
    save_file(
        _kohya_pair("lora_te_text_model_encoder_layers_0_mlp_fc1", 4, 32, 32),
        str(path),
        metadata={"ss_tag_frequency": json.dumps(frequency), "ss_output_name": "pets"},
    )
    info = inspect_file(path)
    assert info.trigger_words == ("Dog", "cat", "hat")
    assert info.output_name == "pets"
    assert info.has_text_encoder is True


def _quadratic_trigger_words(metadata: dict[str, str], *, limit: int = 20) -> tuple[str, ...]:
    """The ordering as it was before issue 16, kept verbatim as the specification of the order."""
    raw = metadata.get("ss_tag_frequency")
    if not raw:
        phrase = metadata.get("modelspec.trigger_phrase", "")
        words = [" ".join(w.split()) for w in phrase.split(",")]
        return tuple(dict.fromkeys(w for w in words if w))[:limit]
    try:
        datasets = json.loads(raw)
    except json.JSONDecodeError:
        return ()
    totals: Counter[str] = Counter()
    first_seen: dict[str, str] = {}
    if not isinstance(datasets, dict):
        return ()
    for tags in datasets.values():
        if not isinstance(tags, dict):
            continue
        for tag, count in tags.items():
            clean = " ".join(str(tag).split())
            if not clean or not isinstance(count, int | float):
                continue
            folded = clean.casefold()
            first_seen.setdefault(folded, clean)
            totals[folded] += count
    ordered = sorted(totals, key=lambda t: (-totals[t], list(first_seen).index(t)))
    return tuple(first_seen[t] for t in ordered[:limit])


# Few distinct words in several spellings, so that case folding, whitespace and ties collide.
_TAG = st.builds(
    lambda word, upper, pad: (pad + (word.upper() if upper else word) + pad),
    st.sampled_from(["cat", "Cat", "dog", "red hat", "red  hat", "1girl", "ß", "SS", ""]),
    st.booleans(),
    st.sampled_from(["", " ", "\t"]),
)
_COUNT = st.one_of(
    st.integers(-3, 50), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(), st.text(max_size=2)
)
_DATASETS = st.dictionaries(
    st.text(max_size=8), st.one_of(st.dictionaries(_TAG, _COUNT, max_size=12), st.integers(), st.lists(st.integers()))
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets=_DATASETS, limit=st.integers(0, 25))
def test_trigger_word_order_is_unchanged_by_the_linear_ordering(datasets: dict, limit: int) -> None:
    metadata = {"ss_tag_frequency": json.dumps(datasets)}
    assert inspection.trigger_words(metadata, limit=limit) == _quadratic_trigger_words(metadata, limit=limit)


def test_a_header_with_200k_tags_is_described_promptly(tmp_path: Path) -> None:
    """Untrusted headers get bounded work: 200,000 distinct tags (the old quadratic ordering
    needed minutes for them, 8,000 took 0.7 s) are ordered within a generous 60 s budget that
    only a super-linear ordering can exceed, in a child process that the timeout then ends."""
    tags = 200_000
    frequency = {
        "1_a": {f"tag {i:06d}": 1 + (i % 3 == 0) for i in range(tags)},
        "1_b": {f"TAG {i:06d}": 1 for i in range(0, tags, 7)},  # case-folded into set a's tags
    }
    path = tmp_path / "many-tags.safetensors"
    save_file(
        _kohya_pair("lora_unet_mid_block_attentions_0_proj_in", 4, 32, 32),
        str(path),
        metadata={"ss_tag_frequency": json.dumps(frequency)},
    )
    code = "import sys, json; from engine.inspect import inspect_file; print(json.dumps(inspect_file(sys.argv[1]).trigger_words))"
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    # i % 21 == 0: counted 2 in set a and once more in set b, the only tags with 3.
    expected = [f"tag {i:06d}" for i in range(0, tags, 21)][:20]
    assert json.loads(done.stdout) == expected


def test_hashes_match_hashlib_and_are_cached_by_size_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "h.safetensors"
    save_file({"w": np.arange(10, dtype=np.float32)}, str(path))
    info = inspect_file(path)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert (info.sha256, info.autov2) == (expected, expected[:10])
    assert info.a1111_hash == _a1111_hash(path)
    save_file({"w": np.arange(11, dtype=np.float32)}, str(path))  # new size: new key
    assert inspect_file(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_hashing_streams_across_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inspection, "HASH_CHUNK_BYTES", 7)  # header straddles many chunks
    path = tmp_path / "c.safetensors"
    save_file({"w": np.arange(100, dtype=np.float32)}, str(path), metadata={"k": "v" * 50})
    inspection._hash_cache.clear()
    info = inspect_file(path)
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.a1111_hash == _a1111_hash(path)


# --- refusals ---------------------------------------------------------------------------


def test_a_torch_zip_renamed_to_safetensors_is_refused_unopened(tmp_path: Path) -> None:
    path = tmp_path / "sneaky.safetensors"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02cos\nsystem\n.")
    error = _refusal(path)
    assert error.code is ErrorCode.NOT_SAFETENSORS
    assert "never unpickled" in error.message


def test_a_raw_pickle_renamed_to_safetensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "raw.safetensors"
    path.write_bytes(b"\x80\x04\x95" + b"\x00" * 40)
    assert _refusal(path).code is ErrorCode.NOT_SAFETENSORS


def test_a_header_whose_length_looks_like_a_pickle_opcode_is_still_read(tmp_path: Path) -> None:
    """A 640-byte header is stored as 0x80 0x02 ...: the pickle protocol-2 signature."""
    body = {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    text = json.dumps(body).encode()
    header = text + b" " * (640 - len(text))
    path = tmp_path / "lucky.safetensors"
    path.write_bytes(struct.pack("<Q", 640) + header + b"\x00" * 4)
    assert path.read_bytes()[:2] == b"\x80\x02"
    info = inspect_file(path)
    assert (info.kind, info.size_bytes) == ("unknown", 652)


def test_truncated_files_are_corrupt(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    save_file({"w": np.arange(64, dtype=np.float32)}, str(good))
    data = good.read_bytes()
    for cut, name in ((5, "tiny"), (20, "in-header"), (len(data) - 16, "in-data")):
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data[:cut])
        error = _refusal(path)
        assert error.code is ErrorCode.CORRUPT_FILE, name


def test_a_huge_header_length_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 50 << 30) + b"{}")
    error = _refusal(path)
    assert error.code is ErrorCode.CORRUPT_FILE
    assert "header claims" in error.message
    # A claim under the cap but beyond the file's end is refused before any read of it.
    path.write_bytes(struct.pack("<Q", 1 << 20) + b"{}")
    with pytest.raises(EngineError, match="only 10"):
        read_header(path)


def test_invalid_json_and_bad_offsets_are_corrupt(tmp_path: Path) -> None:
    bad_json = tmp_path / "json.safetensors"
    bad_json.write_bytes(struct.pack("<Q", 6) + b"{nope}")
    assert _refusal(bad_json).code is ErrorCode.CORRUPT_FILE
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1600]}}).encode()
    out_of_range = tmp_path / "offsets.safetensors"
    out_of_range.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 16)
    assert "claims bytes" in _refusal(out_of_range).message
    header = json.dumps({"w": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}).encode()
    wrong_size = tmp_path / "size.safetensors"
    wrong_size.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 16)
    assert _refusal(wrong_size).code is ErrorCode.CORRUPT_FILE
    nested = b'{"w": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    deep = tmp_path / "deep.safetensors"
    deep.write_bytes(struct.pack("<Q", len(nested)) + nested)
    assert _refusal(deep).code is ErrorCode.CORRUPT_FILE  # not a RecursionError


# --- the demo files the builder makes ---------------------------------------------------


def test_every_demo_lora_is_described_as_built(demo_assets) -> None:
    for lora in demo_assets.loras:
        path = demo_assets.lora_root / lora.file
        info = inspect_file(path, relative_to=demo_assets.lora_root)
        expected_arch = "flux" if lora.name.startswith("flux-only") else lora.architecture
        assert info.path == lora.file
        assert (info.kind, info.architecture) == ("lora", expected_arch), lora.name
        assert info.key_format == lora.key_format, lora.name
        assert info.has_text_encoder == lora.has_text_encoder, lora.name
        assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert info.a1111_hash == _a1111_hash(path)
        assert info.rank in (4, 8)
        if "ss_tag_frequency" in info.metadata:
            assert set(lora.trigger_words) <= set(info.trigger_words), lora.name
        else:
            assert info.trigger_words == (), lora.name


def test_demo_kohya_lora_reports_metadata_and_alpha(demo_assets) -> None:
    lora = next(lo for lo in demo_assets.loras if lo.name == "pixel-art")
    info = inspect_file(demo_assets.lora_root / lora.file)
    assert (info.rank, info.alpha) == (8, 4.0)
    assert info.trigger_words[:3] == ("pixel art", "8-bit", "sprite")
    assert info.output_name == "pixel-art"
    assert info.base_model_version == "sd_v1"


def test_demo_models_are_checkpoints_of_their_architecture(demo_assets) -> None:
    for arch, relative in demo_assets.models.items():
        info = inspect_file(demo_assets.model_root / relative)
        assert (info.kind, info.architecture) == ("checkpoint", arch)
        assert info.has_text_encoder is True


def test_cli_inspect_prints_json_and_does_not_import_torch(demo_assets) -> None:
    lora = demo_assets.loras[0]
    code = (
        "import sys, runpy; sys.argv=['engine','inspect',sys.argv[1]];"
        "import engine.__main__ as m; rc=m.main(sys.argv[1:]);"
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(demo_assets.lora_root / lora.file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert (
        printed["sha256"]
        == hashlib.sha256((demo_assets.lora_root / lora.file).read_bytes()).hexdigest()
    )


def test_modelspec_trigger_phrase_is_used_without_tag_frequency(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file(
        _kohya_pair("lora_unet_mid_block_attentions_0_proj_in", 4, 32, 32),
        str(path),
        metadata={"modelspec.trigger_phrase": "ink sketch, crosshatch,ink sketch"},
    )
    assert inspect_file(path).trigger_words == ("ink sketch", "crosshatch")


def test_an_alpha_of_unknown_dtype_is_not_read_whatever_its_offsets_claim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unknown dtypes escape the width check, so their bytes must never be read into memory."""
    data_bytes = 1 << 20
    header = {
        "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": {
            "dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]
        },
        "lora_unet_mid_block_attentions_0_proj_in.alpha": {
            "dtype": "F4X", "shape": [1], "data_offsets": [4, data_bytes]
        },
    }  # fmt: skip
    text = json.dumps(header).encode()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"\x00" * data_bytes)
    reads: list[int] = []
    real_open = Path.open

    def counting_open(self: Path, *args, **kwargs):  # type: ignore[no-untyped-def]
        handle = real_open(self, *args, **kwargs)
        real_read = handle.read

        def read(size: int = -1) -> bytes:
            chunk = real_read(size)
            reads.append(len(chunk))
            return chunk

        handle.read = read
        return handle

    monkeypatch.setattr(inspection, "file_hashes", lambda _path, _n: ("0" * 64, "0" * 64))
    monkeypatch.setattr(Path, "open", counting_open)
    info = inspect_file(path)
    assert (info.kind, info.alpha) == ("lora", None)
    assert max(reads) <= len(text)  # the header, never the claimed megabyte
