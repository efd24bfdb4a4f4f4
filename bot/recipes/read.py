"""``python -m bot read-recipe FILE... [--json]``: what the importer finds in image files.

For admins checking images from other tools without Discord: the format, the recipe fields,
the model, LoRAs (with weights and hashes), embeddings and VAE it names, and what could not
be read. No registry is opened: matching to a server happens in Discord (``/recipe read``).
Exit status 0 when every file had a recipe, 1 when one had none, 2 for unreadable paths.

Each hash says what it is: a full ``sha256``, or one of AUTOMATIC1111's short hashes (a
prefix of a sha256), which a registry compares by prefix.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from engine.recipe.readers import MAX_FILE_BYTES, read_image

#: Why a read recipe names its model and LoRAs but no files, said once in the JSON report
#: instead of leaving ``"model": ""`` beside the model's name.
UNRESOLVED = (
    "The image names its model, LoRAs and embeddings (recipe.model_name, each name) but no files: "
    "/recipe read in Discord matches them to the server's registry; this command opens no registry."
)


def hash_label(kind: str, value: str) -> str:
    """What a hex digest read from an image is, from its length and what it identifies."""
    if len(value) == 64:
        return "sha256"
    if len(value) == 10:
        return "A1111 short hash (AutoV2: the file's sha256, first 10 hex digits)"
    if len(value) == 12 and kind == "lora":
        return "A1111 short hash (sha256 of the tensors after the safetensors header, first 12 hex digits)"
    if len(value) == 12:
        return "A1111 short hash (the file's sha256, first 12 hex digits)"
    if len(value) == 8 and kind == "model":
        return "A1111 old model hash (8 hex digits, from before 2023; cannot be compared)"
    return f"short hash ({len(value)} hex digits of a sha256)"


def _short_label(label: str) -> str:
    return label.split(" (", 1)[0]


def _describe(path: str, out: TextIO) -> tuple[int, dict[str, Any]]:
    file = Path(path)
    try:
        size = file.stat().st_size
        if size > MAX_FILE_BYTES:
            raise OSError(f"{size / 2**20:.0f} MiB is over the {MAX_FILE_BYTES // 2**20} MiB limit")
        data = file.read_bytes()
    except OSError as exc:
        return 2, {"file": path, "error": str(exc)}
    read = read_image(data)
    if read.found is None:
        return 1, {"file": path, "found": False, "reason": read.reason}
    report: dict[str, Any] = {"file": path, "found": True, **read.found.to_json()}
    for res in report["resources"]:
        res["hashes"] = [{"hash": h, "kind": hash_label(res["kind"], h)} for h in res["hashes"]]
    if not report["exact"]:
        recipe = report["recipe"]
        if recipe.get("model") == "":
            del recipe["model"]
        for ref in recipe.get("loras", []) + recipe.get("embeddings", []):
            if ref.get("file") == "":
                del ref["file"]
        report["files"] = UNRESOLVED
    return 0, report


def _print_text(report: dict[str, Any], out: TextIO) -> None:
    out.write(f"{report['file']}\n")
    if "error" in report:
        out.write(f"  cannot read: {report['error']}\n\n")
        return
    if not report["found"]:
        out.write(f"  {report['reason']}\n\n")
        return
    recipe = report["recipe"]
    out.write(f"  format: {report['format']} ({report['source']}){' - exact' if report['exact'] else ''}\n")
    out.write(f"  prompt: {recipe['prompt']!r}\n")
    if recipe["negative_prompt"]:
        out.write(f"  negative: {recipe['negative_prompt']!r}\n")
    settings = ", ".join(
        f"{key} {recipe[key]}" for key in ("sampler", "steps", "cfg_scale", "seed", "width", "height", "clip_skip")
    )
    out.write(f"  settings: {settings}\n")
    for res in report["resources"]:
        weight = "" if res["weight"] is None else f" x {res['weight']:g}"
        ids = [f"{_short_label(h['kind'])} {h['hash']}" for h in res["hashes"]]
        if res["civitai_version"] is not None:
            ids.append(f"Civitai version {res['civitai_version']}")
        if res["foreign_hash"]:
            ids.append(f"{res['foreign_hash']} (cannot be compared)")
        out.write(f"  {res['kind']}: {res['name'] or '(unnamed)'}{weight}{' (' + ', '.join(ids) + ')' if ids else ''}\n")
    if report["missing"]:
        out.write(f"  not in the image (defaults apply): {', '.join(report['missing'])}\n")
    for note in report["notes"]:
        out.write(f"  note: {note}\n")
    out.write("\n")


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = argparse.ArgumentParser(
        prog="python -m bot read-recipe",
        description="Print what the recipe importer finds in image files: the format, prompt and "
        "settings, and the model, LoRAs, embeddings and VAE they name, with their hashes. No "
        "registry is opened (matching files to a server happens in Discord, /recipe read).",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="PNG, JPEG or WebP files")
    parser.add_argument("--json", action="store_true", help="one JSON object per file, one per line")
    args = parser.parse_args(argv)
    status = 0
    for path in args.files:
        code, report = _describe(path, out)
        status = max(status, code)
        if args.json:
            out.write(json.dumps(report, ensure_ascii=False) + "\n")
        else:
            _print_text(report, out)
    return status
