"""Write what a channel of the double would show: readable text, a simple HTML page, the files.

The offline demo has no Discord client to look at, so it leaves this behind instead: every
message in order (ephemeral ones marked as only visible to their user), embeds as boxes, buttons
as labels, and the uploaded files byte for byte next to the page that shows them.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.discord_double.double import DiscordDouble
from sandbox.discord_double.state import Channel, StoredMessage

_STYLE = """
body { font-family: sans-serif; background: #313338; color: #dbdee1; max-width: 60rem; margin: 2rem auto; }
.message { padding: .5rem 1rem; border-bottom: 1px solid #3f4147; }
.author { font-weight: bold; color: #f2f3f5; }
.ephemeral { opacity: .75; font-style: italic; }
.embed { border-left: 4px solid #5865f2; background: #2b2d31; padding: .5rem 1rem; margin: .5rem 0; }
.field { margin: .25rem 0; }
.field-name { font-weight: bold; }
.button { display: inline-block; background: #4e5058; border-radius: 3px; padding: .2rem .6rem; margin: .2rem; }
img { max-width: 24rem; display: block; margin: .5rem 0; }
pre { white-space: pre-wrap; }
"""


@dataclass(frozen=True)
class Transcript:
    """Where the transcript went: the folder, its text and HTML files, and the saved files."""

    folder: Path
    text: Path
    html: Path
    files: list[Path]


def write_transcript(
    double: DiscordDouble,
    channels: Channel | Iterable[Channel],
    out_dir: Path | str,
    *,
    include_ephemeral: bool = True,
    title: str = "Atelier sandbox",
) -> Transcript:
    """Write ``transcript.txt``, ``index.html`` and ``files/`` for ``channels`` into ``out_dir``."""
    folder = Path(out_dir)
    files_dir = folder / "files"
    files_dir.mkdir(parents=True, exist_ok=True)
    channel_list = [channels] if isinstance(channels, Channel) else list(channels)
    text_parts: list[str] = []
    html_parts: list[str] = [
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style><h1>{html.escape(title)}</h1>",
    ]
    saved: list[Path] = []
    names = {user_id: user.name for user_id, user in double.users.items()}
    for channel in channel_list:
        name = f"#{channel.name}" if channel.name else "direct messages"
        text_parts.append(f"===== {name} =====")
        html_parts.append(f"<h2>{html.escape(name)}</h2>")
        for message in double.messages(channel, include_ephemeral=include_ephemeral):
            paths = _save_files(message, files_dir)
            saved.extend(paths)
            text_parts.append(_message_text(message, paths, folder))
            html_parts.append(_message_html(message, paths, folder, names))
    text_path = folder / "transcript.txt"
    text_path.write_text("\n\n".join(text_parts) + "\n", encoding="utf-8")
    html_path = folder / "index.html"
    html_path.write_text("\n".join(html_parts) + "\n", encoding="utf-8")
    return Transcript(folder, text_path, html_path, saved)


def attachment_paths(message: StoredMessage, files_dir: Path) -> list[Path]:
    """Where :func:`write_transcript` saves each of ``message``'s attachments."""
    # Filenames come from the bot; keep only the last path component.
    return [files_dir / f"{message.id}-{Path(a.filename).name or 'file'}" for a in message.attachments]


def _save_files(message: StoredMessage, files_dir: Path) -> list[Path]:
    paths = attachment_paths(message, files_dir)
    for attachment, path in zip(message.attachments, paths, strict=True):
        path.write_bytes(attachment.data)
    return paths


def message_html(message: StoredMessage, folder: Path, names: dict[int, str]) -> str:
    """One message as the transcript page shows it (its files already saved under ``folder``)."""
    return _message_html(message, attachment_paths(message, folder / "files"), folder, names)


def _message_text(message: StoredMessage, paths: list[Path], folder: Path) -> str:
    lines = message.to_text().splitlines()
    for path in paths:
        lines.append(f"  saved: {path.relative_to(folder)}")
    return "\n".join(lines)


_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")
_MENTION = re.compile(r"&lt;@!?(\d+)&gt;")


def _markdown(text: str, names: dict[int, str]) -> str:
    """The little Markdown Discord's client renders in what the bot sends: bold, code, mentions."""
    out = html.escape(text)
    out = _MENTION.sub(lambda m: f"<b>@{html.escape(names.get(int(m.group(1)), m.group(1)))}</b>", out)
    out = _CODE.sub(r"<code>\1</code>", out)
    return _BOLD.sub(r"<b>\1</b>", out)


def _message_html(message: StoredMessage, paths: list[Path], folder: Path, names: dict[int, str]) -> str:
    classes = "message ephemeral" if message.ephemeral else "message"
    parts = [f"<div class='{classes}'><div class='author'>{html.escape(message.author.name)}"]
    if message.ephemeral:
        parts.append(" <small>(only the user who asked sees this)</small>")
    parts.append("</div>")
    if message.loading:
        parts.append(f"<p>{html.escape(message.author.name)} is thinking…</p>")
    if message.content:
        parts.append(f"<pre>{_markdown(message.content, names)}</pre>")
    for embed in message.embeds:
        parts.append(_embed_html(embed, names))
    for attachment, path in zip(message.attachments, paths, strict=True):
        relative = html.escape(str(path.relative_to(folder)))
        if attachment.content_type.startswith("image/"):
            parts.append(f"<img src='{relative}' alt='{html.escape(attachment.filename)}'>")
        else:
            parts.append(f"<a href='{relative}'>{html.escape(attachment.filename)}</a>")
    if message.buttons:
        parts.append("<div>" + "".join(
            f"<span class='button'>{html.escape(b.label or b.custom_id or '')}</span>" for b in message.buttons
        ) + "</div>")
    parts.append("</div>")
    return "".join(parts)


def _embed_html(embed: dict[str, Any], names: dict[int, str]) -> str:
    parts = ["<div class='embed'>"]
    if embed.get("author"):
        parts.append(f"<div>{html.escape(str(embed['author'].get('name', '')))}</div>")
    if embed.get("title"):
        parts.append(f"<div class='author'>{html.escape(str(embed['title']))}</div>")
    if embed.get("description"):
        parts.append(f"<pre>{_markdown(str(embed['description']), names)}</pre>")
    for field in embed.get("fields") or []:
        parts.append(
            f"<div class='field'><span class='field-name'>{html.escape(str(field.get('name', '')))}</span>"
            f"<pre>{_markdown(str(field.get('value', '')), names)}</pre></div>"
        )
    if embed.get("footer"):
        parts.append(f"<small>{html.escape(str(embed['footer'].get('text', '')))}</small>")
    parts.append("</div>")
    return "".join(parts)
