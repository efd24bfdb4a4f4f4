"""The demo's page (``demo-out/index.html``): what a newcomer opens after ``make demo``.

The transcript (``transcript.txt``) keeps every message in order; this page teaches instead. It
opens with what the bot does and what the pictures are, then the member's session in the order
that explains it (the prompt decides the picture; a LoRA's weight; two LoRAs at once; Remix
next to its original; a refusal), each picture labelled with its recipe as read from the PNG the
bot posted. The admin's setup comes last, folded. No torch: the demo's bot process writes it.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.png_metadata import read_png_metadata
from sandbox.discord_double.state import StoredMessage
from sandbox.discord_double.transcript import attachment_paths, message_html

_STYLE = """
body { font-family: sans-serif; background: #313338; color: #dbdee1; max-width: 68rem; margin: 2rem auto;
       padding: 0 1rem; line-height: 1.45; }
h1, h2 { color: #f2f3f5; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #4e5058; }
.lead { font-size: 1.08rem; background: #2b2d31; padding: 1rem 1.2rem; border-left: 4px solid #5865f2; }
.row { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; background: #2b2d31; padding: .5rem; border-radius: 6px; width: 256px; }
figure img { width: 256px; height: 256px; image-rendering: pixelated; display: block; }
figcaption { font-size: .8rem; margin-top: .4rem; }
figcaption b { color: #f2f3f5; font-size: .95rem; }
code.recipe { display: block; white-space: pre-wrap; word-break: break-word; color: #b5bac1; font-size: .72rem;
              margin-top: .3rem; }
.note { color: #b5bac1; }
details { margin-top: 2rem; background: #2b2d31; padding: .6rem 1rem; border-radius: 6px; }
summary { cursor: pointer; color: #f2f3f5; }
.message { padding: .3rem .6rem; border-bottom: 1px solid #3f4147; font-size: .85rem; }
.message .author { font-weight: bold; } .message pre { white-space: pre-wrap; margin: .2rem 0; }
.embed { border-left: 3px solid #5865f2; padding: .2rem .6rem; margin: .2rem 0; }
.message img { max-width: 8rem; } .button { display: inline-block; background: #4e5058; padding: 0 .4rem; margin: .1rem; }
.refusal { background: #2b2d31; padding: .6rem 1rem; border-left: 4px solid #da373c; white-space: pre-wrap; }
"""

LEAD = (
    "Atelier is a Discord bot that turns a channel into an image studio. A member picks a model, "
    "adds LoRAs (small add-on files that teach the model a style or a character) each with a weight, "
    "writes a prompt, and gets the picture back with its recipe (model, LoRAs and weights, prompt, "
    "sampler, steps, seed), so anyone in the channel can reuse, reroll or remix it. Everything below "
    "was made just now, offline, by the real bot and its real engine, talking to a stand-in for "
    "Discord. The pictures come from a deliberately tiny model (about 4 million parameters; 10 MB "
    "with its two LoRAs) trained for a few GPU minutes on a made-up world: skies at dawn, noon, dusk "
    "and night, the sea or a field, a lighthouse, a house, a tree. So expect soft, simple 256x256 "
    "pictures, not art: what this page shows is that the prompt, the LoRAs and their weights "
    "change the picture the way they would on a real model."
)


@dataclass
class Moments:
    """The messages of the scripted session the page shows, by what they teach."""

    alone: list[tuple[str, StoredMessage]] = field(default_factory=list)
    strip: list[tuple[str, StoredMessage]] = field(default_factory=list)
    stack: list[tuple[str, StoredMessage]] = field(default_factory=list)
    remix: list[tuple[str, StoredMessage]] = field(default_factory=list)
    refusal: StoredMessage | None = None
    refusal_text: str = ""
    admin: list[StoredMessage] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)


def _recipe(path: Path) -> str:
    """The recipe the PNG carries (what A1111's PNG Info shows), or a note that it has none."""
    try:
        return read_png_metadata(path.read_bytes()).get("parameters", "(no recipe in this file)")
    except (OSError, ValueError) as exc:
        return f"(could not read the recipe: {exc})"


def _figures(items: Sequence[tuple[str, StoredMessage]], folder: Path) -> str:
    parts = ["<div class='row'>"]
    for label, message in items:
        for path in attachment_paths(message, folder / "files"):
            relative = html.escape(str(path.relative_to(folder)))
            parts.append(
                f"<figure><img src='{relative}' alt='{html.escape(label)}'><figcaption><b>{html.escape(label)}</b>"
                f"<code class='recipe'>{html.escape(_recipe(path))}</code></figcaption></figure>"
            )
    parts.append("</div>")
    return "".join(parts)


def write_page(folder: Path, moments: Moments, names: dict[int, str], *, title: str = "Atelier: the demo") -> Path:
    """Write ``index.html`` into ``folder`` (whose ``files/`` the transcript already holds)."""
    notes = moments.notes
    body = [
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_STYLE}</style>",
        f"<h1>{html.escape(title)}</h1><p class='lead'>{html.escape(LEAD)}</p>",
        "<h2>1. The prompt decides the picture</h2>",
        f"<p class='note'>{html.escape(notes.get('alone', ''))}</p>",
        _figures(moments.alone, folder),
        "<h2>2. A LoRA and its weight</h2>",
        f"<p class='note'>{html.escape(notes.get('strip', ''))}</p>",
        _figures(moments.strip, folder),
        "<h2>3. Two LoRAs at once</h2>",
        f"<p class='note'>{html.escape(notes.get('stack', ''))}</p>",
        _figures(moments.stack, folder),
        "<h2>4. Remix: the same recipe, one thing changed</h2>",
        f"<p class='note'>{html.escape(notes.get('remix', ''))}</p>",
        _figures(moments.remix, folder),
    ]
    if moments.refusal is not None:
        body += [
            "<h2>5. A request that cannot work is refused before any GPU time is spent</h2>",
            f"<p class='note'>{html.escape(notes.get('refusal', ''))}</p>",
            f"<div class='refusal'>{html.escape(moments.refusal_text)}</div>",
        ]
    body += [
        f"<details><summary>Behind the scenes: how the server's admin set this up "
        f"({len(moments.admin)} commands, click to open)</summary>",
        *(message_html(message, folder, names) for message in moments.admin),
        "</details>",
        "<p class='note'>Every message of the channel, in order: <a href='transcript.txt'>transcript.txt</a>. "
        "Each picture is the PNG file the bot posted; its recipe is inside it (AUTOMATIC1111's PNG Info "
        "and Civitai read it).</p>",
    ]
    path = folder / "index.html"
    path.write_text("\n".join(body) + "\n", encoding="utf-8")
    return path
