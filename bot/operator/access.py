"""The operator's rules: which servers the bot serves, what each may see of the disk, who owns it.

These are configuration, not per-server commands (see :mod:`bot.operator.config`): a server's admins
must not be able to widen what the operator gave them. Three rules:

- **Servers**: an allowlist (empty: every server). Other servers get a polite refusal to
  every command and button, see no file, and are left when ``leave_other_guilds`` is set.
- **Files**: each server sees the engine's model and LoRA files within its *share*: a list
  of folders, files or globs relative to the model and LoRA folders. No shares configured
  means every server sees every file (the single-server install); a host of several
  communities maps each server id to its own folders, ``"*"`` for the rest. The share is
  enforced where files are listed and inspected (:meth:`GuildFiles.list` and
  :meth:`GuildFiles.inspect`, the only way commands reach the engine's files) and again on
  every recipe before it is queued, so an entry registered before the share narrowed stops
  working instead of reading a file the server no longer has.
- **Owners**: the bot's owners (configured, else the application's owner or team) count as
  admins in every allowed server.
"""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.protocol import EngineError, ErrorCode, FileEntry, FileInfo, FileKind, Recipe

#: Of Discord's 3 s for an autocomplete answer, what the engine's file listing may take.
ENGINE_LISTING_TIMEOUT = 2.0
_GLOB = frozenset("*?[")
#: A share entry that names both folders' whole content.
_EVERYTHING = frozenset({"*", "**", "/", ""})
#: Textual-inversion embeddings live in the LoRA folder (see engine.server), so a
#: ``lora:`` rule covers them too.
_FOLDER_OF: dict[str, str] = {"embedding": "lora"}


@dataclass(frozen=True)
class ShareRule:
    """One entry of a share: ``[model:|lora:]folder/``, ``file.safetensors`` or a glob
    (``lora:`` also covers embeddings, which live in the LoRA folder)."""

    pattern: str
    kind: FileKind | None = None

    @classmethod
    def parse(cls, text: str) -> ShareRule:
        kind: FileKind | None = None
        head, sep, rest = text.partition(":")
        if sep and head in ("model", "lora"):
            kind, text = head, rest  # type: ignore[assignment]
        text = text.strip().replace("\\", "/")
        if text in _EVERYTHING:
            return cls("*", kind)
        return cls(text.removeprefix("./").lstrip("/"), kind)

    def allows(self, kind: FileKind, path: str) -> bool:
        if self.kind is not None and self.kind != _FOLDER_OF.get(kind, kind):
            return False
        if self.pattern == "*":
            return True
        if _GLOB & set(self.pattern):
            return fnmatch.fnmatchcase(path, self.pattern)
        folder = self.pattern.rstrip("/")
        return path == folder or path.startswith(folder + "/")


@dataclass(frozen=True)
class AccessPolicy:
    allowed_guilds: frozenset[int] = frozenset()
    #: Server id, or "*" for every server without an entry of its own -> its rules.
    shares: Mapping[str, tuple[ShareRule, ...]] = field(default_factory=dict)
    owners: frozenset[int] = frozenset()

    @classmethod
    def from_config(
        cls,
        *,
        allowed_guilds: Iterable[int] = (),
        shares: Mapping[str, Iterable[str]] | None = None,
        owners: Iterable[int] = (),
    ) -> AccessPolicy:
        rules = {key: tuple(ShareRule.parse(e) for e in entries) for key, entries in (shares or {}).items()}
        return cls(frozenset(allowed_guilds), rules, frozenset(owners))

    def with_owners(self, owners: Iterable[int]) -> AccessPolicy:
        return AccessPolicy(self.allowed_guilds, self.shares, frozenset(owners))

    def guild_allowed(self, guild_id: int | None) -> bool:
        return guild_id is not None and (not self.allowed_guilds or guild_id in self.allowed_guilds)

    def is_owner(self, user_id: int) -> bool:
        return user_id in self.owners

    def rules_for(self, guild_id: int) -> tuple[ShareRule, ...] | None:
        """The server's rules; None when no shares are configured (everything visible)."""
        if not self.shares:
            return None
        return self.shares.get(str(guild_id), self.shares.get("*", ()))

    def download_folder(self, guild_id: int, subfolder: str) -> str | None:
        """Where files fetched for this server go, relative to the LoRA folder: ``subfolder``
        inside the first folder of its share (at the top with no shares or a ``*`` share);
        None when its share names only files or globs, so nothing fetched could stay visible."""
        subfolder = subfolder.strip().strip("/")
        rules = self.rules_for(guild_id)
        if rules is None:
            return subfolder
        for rule in rules:
            if rule.kind not in (None, "lora"):
                continue
            if rule.pattern == "*":
                return subfolder
            if _GLOB & set(rule.pattern) or rule.pattern.lower().endswith(".safetensors"):
                continue
            return f"{rule.pattern.rstrip('/')}/{subfolder}".strip("/")
        return None

    def file_visible(self, guild_id: int, kind: FileKind, path: str) -> bool:
        if not self.guild_allowed(guild_id):
            return False
        if ".." in path.replace("\\", "/").split("/"):
            return False  # the engine refuses these anyway; no prefix may be climbed out of
        rules = self.rules_for(guild_id)
        return rules is None or any(rule.allows(kind, path) for rule in rules)

    def recipe_refusal(self, guild_id: int, recipe: Recipe) -> str | None:
        """Why ``recipe`` may not run for this server (a file outside its share), or None."""
        names: list[str] = []
        if not self.file_visible(guild_id, "model", recipe.model):
            names.append(f"the model `{recipe.model_name or 'of this recipe'}`")
        if recipe.vae and not self.file_visible(guild_id, "model", recipe.vae):
            names.append(f"the VAE of the model `{recipe.model_name or 'of this recipe'}`")
        names += [
            f"the LoRA `{lora.display_name}`"
            for lora in recipe.loras
            if not self.file_visible(guild_id, "lora", lora.file)
        ]
        names += [
            f"the embedding `{e.name}`"
            for e in recipe.embeddings
            if not self.file_visible(guild_id, "embedding", e.file)
        ]
        if not names:
            return None
        return (
            f"{', '.join(names)} use{'s' if len(names) == 1 else ''} a file this bot's operator "
            "no longer shares with this server, so it cannot run here. Ask an admin to remove "
            "or replace it (`/model remove`, `/lora remove`)."
        )


def _outside(path: str) -> EngineError:
    # The same words as for a file that does not exist: a server must not learn, by
    # probing names, which files other servers are given.
    return EngineError(
        ErrorCode.UNKNOWN_FILE,
        f"'{path}' is not among the files this server may use; pick one that autocomplete offers",
    )


class GuildFiles:
    """The engine's files as one server may see them: the only door commands use to them."""

    def __init__(self, engine: Any, policy: AccessPolicy, guild_id: int) -> None:
        self._engine = engine
        self._policy = policy
        self._guild_id = guild_id

    async def list(self, kind: FileKind, *, timeout: float = ENGINE_LISTING_TIMEOUT) -> list[FileEntry]:  # noqa: ASYNC109
        """The files of ``kind`` within the server's share (raises EngineError, TimeoutError)."""
        if not self._policy.guild_allowed(self._guild_id):
            return []
        files = await asyncio.wait_for(self._engine.list_files(kind), timeout)
        return [f for f in files if self._policy.file_visible(self._guild_id, kind, f.path)]

    async def inspect(self, kind: FileKind, path: str) -> FileInfo:
        """The engine's reading of ``path``, refused (before the engine is asked) outside the share."""
        if not self._policy.file_visible(self._guild_id, kind, path):
            raise _outside(path)
        return await self._engine.inspect(kind, path)
