"""Civitai's REST API, as far as Atelier needs it: model versions by id, by hash, and a model's
latest version.

The answer is read once into :class:`CivitaiVersion`, so the rest of the bot never touches
Civitai's JSON: field names are those of ``GET /api/v1/model-versions/{id}`` (``files[]`` with
``hashes.SHA256``, ``primary``, ``metadata.format``, ``sizeKB``, ``type``; ``trainedWords``,
``baseModel``, ``model.type``, ``model.nsfw``, ``nsfwLevel``, ``images``, ``downloadUrl``).

The operator's API token (``civitai_token``) goes in an ``Authorization: Bearer`` header and
nowhere else: never in a URL (which ends up in logs), never in an error message, never in
``repr``. The API itself is never followed through a redirect: a 3xx from it is an answer
we do not understand, not an invitation to send the token elsewhere.
"""

from __future__ import annotations

import html.parser
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from engine.paths import PICKLE_SUFFIXES

DEFAULT_API_URL = "https://civitai.com"
DEFAULT_TIMEOUT_S = 20.0
#: An API answer larger than this is not a model version (real ones are tens of kilobytes).
MAX_ANSWER_BYTES = 4 << 20

#: Civitai's NsfwLevel flags (a version's ``nsfwLevel`` ORs those of its images).
NSFW_PG, NSFW_PG13, NSFW_R, NSFW_X, NSFW_XXX = 1, 2, 4, 8, 16
#: Levels that make an entry NSFW in Atelier's sense (R and above).
NSFW_MATURE = NSFW_R | NSFW_X | NSFW_XXX | 32


class CivitaiError(Exception):
    """Civitai could not answer; ``reason`` is stable (tests, advice), ``message`` for people."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class CivitaiFile:
    id: int
    name: str
    size_bytes: int
    #: "Model", "Negative" (negative embeddings), "Archive", "Training Data", "VAE", "Config"...
    type: str
    #: ``metadata.format``: "SafeTensor", "PickleTensor", "Other" (or "" when not given).
    format: str
    #: Lower case hex; "" when Civitai lists none (then the file cannot be verified).
    sha256: str
    autov2: str
    primary: bool
    download_url: str
    pickle_scan: str = ""
    virus_scan: str = ""
    hashes: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_pickle(self) -> bool:
        suffix = "." + self.name.rsplit(".", 1)[-1].lower() if "." in self.name else ""
        return self.format == "PickleTensor" or suffix in PICKLE_SUFFIXES

    @property
    def is_archive(self) -> bool:
        return self.type == "Archive" or self.name.lower().endswith(ARCHIVE_SUFFIXES)

    @property
    def is_safetensors(self) -> bool:
        return self.name.lower().endswith(".safetensors") and not self.is_pickle and not self.is_archive

    def matches_hash(self, value: str) -> bool:
        value = value.lower()
        return any(h.lower() == value for h in self.hashes.values())


ARCHIVE_SUFFIXES = (".zip", ".7z", ".rar", ".tar", ".gz", ".tgz", ".bz2", ".xz")


@dataclass(frozen=True)
class CivitaiImage:
    url: str
    nsfw_level: int
    kind: str = "image"


@dataclass(frozen=True)
class CivitaiVersion:
    id: int
    model_id: int
    name: str
    model_name: str
    #: ``model.type``: "LORA", "LoCon", "DoRA", "TextualInversion", "Checkpoint", ...
    model_type: str
    #: "SD 1.5", "SDXL 1.0", "Pony", "Illustrious", "Flux.1 D", ...
    base_model: str
    trained_words: tuple[str, ...]
    description: str
    air: str
    model_nsfw: bool
    nsfw_level: int
    files: tuple[CivitaiFile, ...]
    images: tuple[CivitaiImage, ...] = ()
    download_url: str = ""
    status: str = "Published"

    @property
    def nsfw(self) -> bool:
        return self.model_nsfw or bool(self.nsfw_level & NSFW_MATURE)

    @property
    def page_url(self) -> str:
        return f"https://civitai.com/models/{self.model_id}?modelVersionId={self.id}"

    def preview(self) -> str | None:
        """A preview picture: the first safe-for-work image, else (for an NSFW entry, whose card
        hides it where NSFW is not allowed) the first image."""
        stills = [i for i in self.images if i.kind == "image" and i.url.startswith("https://")]
        safe = [i for i in stills if 0 < i.nsfw_level <= NSFW_PG13]
        if safe:
            return safe[0].url
        return stills[0].url if stills and self.nsfw else None


def read_version(data: Any) -> CivitaiVersion:
    """``GET /api/v1/model-versions/{id}``'s JSON -> a CivitaiVersion (CivitaiError if malformed)."""
    if not isinstance(data, dict):
        raise CivitaiError("bad_answer", "Civitai answered something that is not a model version")
    try:
        model = data.get("model") or {}
        files = tuple(_read_file(f) for f in data.get("files") or [] if isinstance(f, dict))
        images = tuple(
            CivitaiImage(str(i.get("url") or ""), int(i.get("nsfwLevel") or 0), str(i.get("type") or "image"))
            for i in data.get("images") or []
            if isinstance(i, dict)
        )
        words = tuple(w.strip() for w in data.get("trainedWords") or [] if isinstance(w, str) and w.strip())
        return CivitaiVersion(
            id=int(data["id"]),
            model_id=int(data.get("modelId") or 0),
            name=str(data.get("name") or ""),
            model_name=str(model.get("name") or ""),
            model_type=str(model.get("type") or ""),
            base_model=str(data.get("baseModel") or ""),
            trained_words=words,
            description=html_to_text(data.get("description") or ""),
            air=str(data.get("air") or ""),
            model_nsfw=bool(model.get("nsfw", False)),
            nsfw_level=int(data.get("nsfwLevel") or 0),
            files=files,
            images=images,
            download_url=str(data.get("downloadUrl") or ""),
            status=str(data.get("status") or "Published"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CivitaiError("bad_answer", f"Civitai's answer is missing or garbles a field ({exc})") from exc


def _read_file(data: dict[str, Any]) -> CivitaiFile:
    hashes = {str(k): str(v) for k, v in (data.get("hashes") or {}).items() if isinstance(v, str)}
    metadata = data.get("metadata") or {}
    size_kb = float(data.get("sizeKB") or 0)
    return CivitaiFile(
        id=int(data.get("id") or 0),
        name=str(data.get("name") or ""),
        size_bytes=round(size_kb * 1024),
        type=str(data.get("type") or ""),
        format=str(metadata.get("format") or data.get("format") or ""),
        sha256=str(hashes.get("SHA256") or "").lower(),
        autov2=str(hashes.get("AutoV2") or "").upper(),
        primary=bool(data.get("primary", False)),
        download_url=str(data.get("downloadUrl") or ""),
        pickle_scan=str(data.get("pickleScanResult") or ""),
        virus_scan=str(data.get("virusScanResult") or ""),
        hashes=hashes,
    )


class _Text(html.parser.HTMLParser):
    """Civitai's descriptions are HTML; the registry keeps text (stdlib's parser, no regex):
    paragraphs and headings become blank-line separated, line breaks and list items lines."""

    _PARAGRAPHS = frozenset({"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "table", "blockquote"})
    _LINES = frozenset({"br", "li", "tr", "hr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in self._PARAGRAPHS:
            self.parts.append("\n\n")
        elif tag in self._LINES:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._PARAGRAPHS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


_BLANK_LINES = re.compile(r"\n\s*\n\s*")
_SPACES = re.compile(r"[ \t\r\f\v]+")


def html_to_text(value: str, *, limit: int = 1500) -> str:
    if not isinstance(value, str) or not value:
        return ""
    parser = _Text()
    parser.feed(value)
    parser.close()
    text = _SPACES.sub(" ", "".join(parser.parts))
    text = _BLANK_LINES.sub("\n\n", "\n".join(line.strip() for line in text.split("\n"))).strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


class CivitaiClient:
    """Looks versions up on Civitai (or a mirror at ``base_url``). The token is optional."""

    def __init__(self, base_url: str = DEFAULT_API_URL, *, token: str = "", timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<CivitaiClient {self.base_url}{' with a token' if self._token else ''}>"

    @property
    def has_token(self) -> bool:
        return bool(self._token)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Accept": "application/json", "User-Agent": "Atelier (Discord bot)"}
            if self._token:
                headers["Authorization"] = f"Bearer {self._token}"
            self._session = aiohttp.ClientSession(headers=headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _get(self, path: str, what: str) -> Any:
        url = f"{self.base_url}/api/v1/{path}"
        try:
            async with self._http().get(url, timeout=self._timeout, allow_redirects=False) as response:
                body = await response.content.read(MAX_ANSWER_BYTES + 1)
                status = response.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise CivitaiError(
                "unavailable", f"Civitai did not answer ({type(exc).__name__}); try again in a minute"
            ) from exc
        if status == 404:
            raise CivitaiError(
                "not_found", f"Civitai has no {what} (it may be unpublished, deleted or mistyped)"
            )
        if status in (401, 403):
            advice = (
                "the operator's API token was refused (expired, or it lacks access)"
                if self._token
                else "it needs a login: the operator can set an API token (ATELIER_CIVITAI_TOKEN)"
            )
            raise CivitaiError("unauthorized", f"Civitai would not show {what}: {advice}")
        if status >= 300 or len(body) > MAX_ANSWER_BYTES:
            raise CivitaiError("unavailable", f"Civitai answered HTTP {status} about {what}; try again later")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise CivitaiError("bad_answer", f"Civitai's answer about {what} is not JSON") from exc

    async def version(self, version_id: int) -> CivitaiVersion:
        return read_version(await self._get(f"model-versions/{int(version_id)}", f"model version {version_id}"))

    async def version_by_hash(self, file_hash: str) -> CivitaiVersion:
        if not re.fullmatch(r"[0-9A-Fa-f]{8,64}", file_hash):
            raise CivitaiError("not_found", f"`{file_hash[:70]}` is not a file hash")
        data = await self._get(f"model-versions/by-hash/{file_hash}", f"file with hash {file_hash[:16]}")
        return read_version(data)

    async def latest_version(self, model_id: int) -> CivitaiVersion:
        data = await self._get(f"models/{int(model_id)}", f"model {model_id}")
        versions = data.get("modelVersions") if isinstance(data, dict) else None
        if not versions or not isinstance(versions[0], dict) or "id" not in versions[0]:
            raise CivitaiError("not_found", f"Civitai model {model_id} has no published version")
        return await self.version(int(versions[0]["id"]))

    async def model_details(self, model_id: int) -> tuple[str, tuple[str, ...]]:
        """The model page's description (versions often have none of their own) and tags;
        empty when Civitai does not answer (they are niceties, never a reason to refuse)."""
        try:
            data = await self._get(f"models/{int(model_id)}", f"model {model_id}")
        except CivitaiError:
            return "", ()
        if not isinstance(data, dict):
            return "", ()
        tags = tuple(str(t).lower() for t in data.get("tags") or [] if isinstance(t, str))
        return html_to_text(data.get("description") or ""), tags
