"""Where the bot's settings come from: environment variables, optionally a TOML file.

The environment wins over the file so a deployment can override one key without editing
the file. Every key, its variable and its default (Markdown, ready for the README):

| TOML key | Environment variable | Default | Meaning |
|---|---|---|---|
| `token` | `DISCORD_TOKEN` | (none, required) | The bot's token from the Developer Portal |
| `data_dir` | `ATELIER_DATA_DIR` | `./var` | Folder for the SQLite registry |
| `database` | `ATELIER_DATABASE` | `<data_dir>/atelier.sqlite3` | SQLite file, if elsewhere |
| `engine_url` | `ATELIER_ENGINE_URL` | (empty: spawn one) | Use an engine already running at this URL |
| `engine_urls` | `ATELIER_ENGINE_URLS` | (empty) | Several engines already running (comma-separated URLs, one per GPU or machine); jobs go to a free one, preferring one that holds their model |
| `engine_backend` | `ATELIER_ENGINE_BACKEND` | `process` | `process`: one engine process per address (or one spawned); `ray`: `engine_url` is a Ray Serve cluster's address (README, "Many GPUs") |
| `engine_depth` | `ATELIER_ENGINE_DEPTH` | `2` | Jobs (or batches) each engine holds at once, so the next is ready while one denoises |
| `engine_batch` | `ATELIER_ENGINE_BATCH` | `4` | Most compatible jobs handed to an engine together (same model, LoRAs, size, steps, sampler, CFG) |
| `engine_port` | `ATELIER_ENGINE_PORT` | `7861` | Loopback port of the spawned engine |
| `model_dir` | `ATELIER_MODEL_DIR` | `./models` | Base models folder for the spawned engine |
| `lora_dir` | `ATELIER_LORA_DIR` | `./loras` | LoRA folder for the spawned engine |
| `engine_python` | `ATELIER_ENGINE_PYTHON` | this interpreter | Python that runs the engine (e.g. a CUDA venv) |
| `engine_start_timeout` | `ATELIER_ENGINE_START_TIMEOUT` | `120` | Seconds to wait for the engine's `/health` |
| `sync_guilds` | `ATELIER_SYNC_GUILDS` | (empty: global) | Comma-separated guild ids to sync commands to instantly |
| `status_interval` | `ATELIER_STATUS_INTERVAL` | `2` | Minimum seconds between edits of a status message |
| `max_pending` | `ATELIER_MAX_PENDING` | `2000` | Jobs the bot holds for all servers together |
| `server_share` | `ATELIER_SERVER_SHARE` | `0.5` | Largest share of `max_pending` one server may hold |
| `stall_limit` | `ATELIER_STALL_LIMIT` | `900` | Seconds a job may go without progress before it is stopped (an engine the bot started is then restarted; raise it for very slow GPUs) |
| `retry_wait` | `ATELIER_RETRY_WAIT` | `300` | Seconds a job interrupted by an engine crash waits for an engine before it fails |
| `result_retry` | `ATELIER_RESULT_RETRY` | `900` | Seconds a finished image is retried while Discord fails, before the member is told |
| `log_level` | `ATELIER_LOG_LEVEL` | `INFO` | Logging level |
| `engine_token` | `ATELIER_ENGINE_TOKEN` | (generated) | The engine's shared secret (one for all engines). Required with `engine_url` or `engine_urls`; a spawned engine gets one generated on first start and kept in `<data_dir>/engine-token` (mode 600) |
| `allowed_guilds` | `ATELIER_ALLOWED_GUILDS` | (empty: every server) | Comma-separated ids of the servers the bot serves; others get a polite refusal |
| `leave_other_guilds` | `ATELIER_LEAVE_OTHER_GUILDS` | `false` | Leave servers not in `allowed_guilds` (when invited, and at start) |
| `owners` | `ATELIER_OWNERS` | (the application's owner or team) | Comma-separated user ids of the bot's owners: admins in every allowed server |
| `shares` | `ATELIER_SHARES` | (empty: every server sees every file) | Which model/LoRA files each server may see: a TOML table, or JSON in the variable, mapping a server id (or `"*"` for the others) to a list of folders, files or globs |
| `data_grace_days` | `ATELIER_DATA_GRACE_DAYS` | `30` | Days a server's data is kept after the bot is removed from it, then deleted |
| `image_classifier` | `ATELIER_IMAGE_CLASSIFIER` | `auto` | `nudenet` (required), `auto` (NudeNet if installed) or `off`: the check run on every image before it is posted |
| `civitai_fetch` | `ATELIER_CIVITAI_FETCH` | `false` | Let admins fetch LoRAs from Civitai (`/lora add source:`); a spawned engine then gets `--allow-downloads` |
| `civitai_fetch_guilds` | `ATELIER_CIVITAI_FETCH_GUILDS` | (empty: every allowed server) | Comma-separated ids of the servers that may fetch |
| `civitai_token` | `ATELIER_CIVITAI_TOKEN` | (none) | A Civitai API key, for files whose creators require a login; never logged or shown |
| `civitai_url` | `ATELIER_CIVITAI_URL` | `https://civitai.com` | Civitai's address (a mirror) |
| `civitai_max_file_size` | `ATELIER_CIVITAI_MAX_FILE_SIZE` | `2GiB` | The largest file one fetch may download |
| `civitai_guild_quota` | `ATELIER_CIVITAI_GUILD_QUOTA` | `20GiB` | Disk one server's downloads may fill (what lies in its download folder) |
| `civitai_download_timeout` | `ATELIER_CIVITAI_DOWNLOAD_TIMEOUT` | `1800` | Seconds one download may take in all |
| `civitai_stall_timeout` | `ATELIER_CIVITAI_STALL_TIMEOUT` | `60` | Seconds without a byte after which a download counts as stalled |
| `civitai_download_hosts` | `ATELIER_CIVITAI_DOWNLOAD_HOSTS` | Civitai and its storage hosts | Comma-separated hosts a spawned engine may download from (`*.example.com` for subdomains) |
| `civitai_folder` | `ATELIER_CIVITAI_FOLDER` | `civitai` | Subfolder of each server's share of the LoRA folder that fetched files go to |

Per-server limits (stack cap, weight range, per-user queue limit, NSFW policy...) are not
here: admins change them with ``/settings`` and they live in the database.
Pass ``--config FILE`` or set ``ATELIER_CONFIG`` to read a TOML file (top-level keys or an
``[atelier]`` table).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import parse_size
from engine.downloads import DEFAULT_DOWNLOAD_HOSTS

_ENV = {
    "token": "DISCORD_TOKEN",
    "data_dir": "ATELIER_DATA_DIR",
    "database": "ATELIER_DATABASE",
    "engine_url": "ATELIER_ENGINE_URL",
    "engine_urls": "ATELIER_ENGINE_URLS",
    "engine_backend": "ATELIER_ENGINE_BACKEND",
    "engine_depth": "ATELIER_ENGINE_DEPTH",
    "engine_batch": "ATELIER_ENGINE_BATCH",
    "engine_port": "ATELIER_ENGINE_PORT",
    "model_dir": "ATELIER_MODEL_DIR",
    "lora_dir": "ATELIER_LORA_DIR",
    "engine_python": "ATELIER_ENGINE_PYTHON",
    "engine_start_timeout": "ATELIER_ENGINE_START_TIMEOUT",
    "sync_guilds": "ATELIER_SYNC_GUILDS",
    "status_interval": "ATELIER_STATUS_INTERVAL",
    "max_pending": "ATELIER_MAX_PENDING",
    "server_share": "ATELIER_SERVER_SHARE",
    "stall_limit": "ATELIER_STALL_LIMIT",
    "retry_wait": "ATELIER_RETRY_WAIT",
    "result_retry": "ATELIER_RESULT_RETRY",
    "log_level": "ATELIER_LOG_LEVEL",
    "engine_token": "ATELIER_ENGINE_TOKEN",
    "allowed_guilds": "ATELIER_ALLOWED_GUILDS",
    "leave_other_guilds": "ATELIER_LEAVE_OTHER_GUILDS",
    "owners": "ATELIER_OWNERS",
    "shares": "ATELIER_SHARES",
    "data_grace_days": "ATELIER_DATA_GRACE_DAYS",
    "image_classifier": "ATELIER_IMAGE_CLASSIFIER",
    "civitai_fetch": "ATELIER_CIVITAI_FETCH",
    "civitai_fetch_guilds": "ATELIER_CIVITAI_FETCH_GUILDS",
    "civitai_token": "ATELIER_CIVITAI_TOKEN",
    "civitai_url": "ATELIER_CIVITAI_URL",
    "civitai_max_file_size": "ATELIER_CIVITAI_MAX_FILE_SIZE",
    "civitai_guild_quota": "ATELIER_CIVITAI_GUILD_QUOTA",
    "civitai_download_timeout": "ATELIER_CIVITAI_DOWNLOAD_TIMEOUT",
    "civitai_stall_timeout": "ATELIER_CIVITAI_STALL_TIMEOUT",
    "civitai_download_hosts": "ATELIER_CIVITAI_DOWNLOAD_HOSTS",
    "civitai_folder": "ATELIER_CIVITAI_FOLDER",
}
_ID_LISTS = ("sync_guilds", "allowed_guilds", "owners", "civitai_fetch_guilds")
#: Sizes written like engine.config.parse_size reads them ("2GiB", "500MB", bytes).
_SIZES = ("civitai_max_file_size", "civitai_guild_quota")
_TEXT_LISTS = ("civitai_download_hosts",)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
IMAGE_CLASSIFIERS = ("auto", "nudenet", "off")
ENGINE_BACKENDS = ("process", "ray")


class ConfigError(ValueError):
    """A setting the bot cannot start with; the message names the key and the fix."""


@dataclass(frozen=True)
class BotConfig:
    token: str = dataclasses.field(default="", repr=False)
    data_dir: Path = Path("var")
    database: Path | None = None
    engine_url: str = ""
    engine_urls: tuple[str, ...] = ()
    #: "process" (engine processes, or one spawned) or "ray" (a Serve cluster at engine_url).
    engine_backend: str = "process"
    engine_depth: int = 2
    engine_batch: int = 4
    engine_port: int = 7861
    model_dir: Path = Path("models")
    lora_dir: Path = Path("loras")
    engine_python: str = ""
    engine_start_timeout: float = 120.0
    sync_guilds: tuple[int, ...] = ()
    status_interval: float = 2.0
    max_pending: int = 2000
    server_share: float = 0.5
    stall_limit: float = 900.0
    retry_wait: float = 300.0
    result_retry: float = 900.0
    log_level: str = "INFO"
    #: Kept out of repr: a config printed or logged must not show the secret.
    engine_token: str = dataclasses.field(default="", repr=False)
    allowed_guilds: tuple[int, ...] = ()
    leave_other_guilds: bool = False
    owners: tuple[int, ...] = ()
    #: Server id (or "*") -> the folders, files or globs it may see; empty: all, for all.
    shares: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    data_grace_days: float = 30.0
    image_classifier: str = "auto"
    civitai_fetch: bool = False
    civitai_fetch_guilds: tuple[int, ...] = ()
    #: Kept out of repr, like the other secrets.
    civitai_token: str = dataclasses.field(default="", repr=False)
    civitai_url: str = "https://civitai.com"
    civitai_max_file_size: int = 2 * 1024**3
    civitai_guild_quota: int = 20 * 1024**3
    civitai_download_timeout: float = 1800.0
    civitai_stall_timeout: float = 60.0
    civitai_download_hosts: tuple[str, ...] = DEFAULT_DOWNLOAD_HOSTS
    civitai_folder: str = "civitai"

    @property
    def database_path(self) -> Path:
        return self.database or self.data_dir / "atelier.sqlite3"

    @property
    def external_engines(self) -> tuple[str, ...]:
        """Engines already running that the bot uses (empty: it starts its own)."""
        urls = [*([self.engine_url] if self.engine_url else []), *self.engine_urls]
        return tuple(dict.fromkeys(url.rstrip("/") for url in urls))

    @property
    def engine_token_path(self) -> Path:
        """Where the token of an engine the bot starts itself is kept between runs."""
        return self.data_dir / "engine-token"

    @classmethod
    def load(
        cls, env: Mapping[str, str] | None = None, config_file: str | Path | None = None
    ) -> BotConfig:
        """Merge defaults, then the TOML file, then the environment."""
        env = os.environ if env is None else env
        raw: dict[str, Any] = {}
        path = config_file or env.get("ATELIER_CONFIG")
        if path:
            try:
                with open(path, "rb") as fh:
                    data = tomllib.load(fh)
            except FileNotFoundError as exc:
                raise ConfigError(f"config file '{path}' does not exist; create it or unset ATELIER_CONFIG") from exc
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file '{path}' is not valid TOML: {exc}") from exc
            table = data.get("atelier", data)
            unknown = set(table) - set(_ENV)
            if unknown:
                raise ConfigError(
                    f"unknown keys in '{path}': {sorted(unknown)}; known keys are {sorted(_ENV)}"
                )
            raw.update(table)
        for key, var in _ENV.items():
            if env.get(var, "") != "":
                raw[key] = env[var]
        return cls._coerce(raw)

    @classmethod
    def _coerce(cls, raw: dict[str, Any]) -> BotConfig:
        values: dict[str, Any] = {}
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for key, value in raw.items():
            kind = types[key]
            try:
                if key in _ID_LISTS:
                    if isinstance(value, str):
                        value = [v for v in value.replace(" ", "").split(",") if v]
                    values[key] = tuple(int(v) for v in value)
                elif key == "engine_urls":
                    if isinstance(value, str):
                        value = value.replace(" ", "").split(",")
                    urls = tuple(str(v) for v in value if str(v))
                    bad = [u for u in urls if not u.startswith(("http://", "https://"))]
                    if bad:
                        raise ValueError(f"not an http(s) URL: {bad[0]}")
                    values[key] = urls
                elif key == "shares":
                    values[key] = _shares(value)
                elif key in _SIZES:
                    values[key] = value if isinstance(value, int) and not isinstance(value, bool) else parse_size(str(value))
                elif key in _TEXT_LISTS:
                    items = value.split(",") if isinstance(value, str) else list(value)
                    values[key] = tuple(str(v).strip() for v in items if str(v).strip())
                elif kind in ("bool", bool):
                    values[key] = _bool(value)
                elif "Path" in str(kind):
                    values[key] = Path(value).expanduser()
                elif kind in ("int", int):
                    values[key] = int(value)
                elif kind in ("float", float):
                    values[key] = float(value)
                else:
                    values[key] = str(value)
            except ConfigError:
                raise
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"setting '{key}' ({_ENV[key]}) has the value {value!r}, which is not a valid "
                    f"{kind}; fix it in the environment or the config file"
                ) from exc
        config = cls(**values)
        for key, low in (("engine_depth", 1), ("engine_batch", 1), ("max_pending", 1)):
            if getattr(config, key) < low:
                raise ConfigError(f"setting '{key}' ({_ENV[key]}) must be at least {low}")
        if not 0 < config.server_share <= 1:
            raise ConfigError("setting 'server_share' (ATELIER_SERVER_SHARE) must be above 0 and at most 1")
        if config.image_classifier not in IMAGE_CLASSIFIERS:
            raise ConfigError(
                f"image_classifier (ATELIER_IMAGE_CLASSIFIER) is {config.image_classifier!r}; "
                f"use one of {', '.join(IMAGE_CLASSIFIERS)}"
            )
        if config.engine_backend not in ENGINE_BACKENDS:
            raise ConfigError(
                f"engine_backend (ATELIER_ENGINE_BACKEND) is {config.engine_backend!r}; use one of "
                f"{', '.join(ENGINE_BACKENDS)}"
            )
        if config.engine_backend == "ray" and len(config.external_engines) != 1:
            raise ConfigError(
                "engine_backend (ATELIER_ENGINE_BACKEND) is 'ray': set engine_url (ATELIER_ENGINE_URL) "
                "to the Ray Serve cluster's HTTP address, e.g. http://head:8000, and leave engine_urls "
                "empty (the cluster routes jobs to its replicas itself)"
            )
        if config.data_grace_days < 0:
            raise ConfigError("data_grace_days (ATELIER_DATA_GRACE_DAYS) cannot be negative")
        for key in ("civitai_max_file_size", "civitai_guild_quota", "civitai_download_timeout", "civitai_stall_timeout"):
            if getattr(config, key) <= 0:
                raise ConfigError(f"{key} ({_ENV[key]}) must be above zero")
        if not config.civitai_url.startswith(("https://", "http://")):
            raise ConfigError("civitai_url (ATELIER_CIVITAI_URL) must be an http(s) address such as https://civitai.com")
        if config.civitai_fetch and not config.civitai_download_hosts:
            raise ConfigError("civitai_download_hosts (ATELIER_CIVITAI_DOWNLOAD_HOSTS) is empty while fetching is on")
        if ".." in config.civitai_folder.replace("\\", "/").split("/"):
            raise ConfigError("civitai_folder (ATELIER_CIVITAI_FOLDER) must stay inside the LoRA folder (no '..')")
        return config


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{value!r} is not true or false")


def _shares(value: Any) -> dict[str, tuple[str, ...]]:
    """``{"<server id>" | "*": ["folder/", "file.safetensors", "glob*"]}`` from TOML or JSON."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                "shares (ATELIER_SHARES) must be JSON such as "
                '\'{"123456789012345678": ["community-a/"], "*": ["shared/"]}\': ' + str(exc)
            ) from exc
    if not isinstance(value, Mapping):
        raise ConfigError("shares must map server ids (or \"*\") to lists of folders or files")
    shares: dict[str, tuple[str, ...]] = {}
    for key, entries in value.items():
        key = str(key).strip()
        if key != "*" and not key.isdigit():
            raise ConfigError(f"shares: {key!r} is not a server id or \"*\"")
        if isinstance(entries, str) or not all(isinstance(e, str) for e in entries):
            raise ConfigError(f"shares: the entry for {key} must be a list of folder or file names")
        shares[key] = tuple(e.strip() for e in entries)
    return shares
