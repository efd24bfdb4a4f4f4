"""Settings of ``python -m engine serve``: command-line flags first, then environment.

Every flag has an ``ATELIER_ENGINE_<NAME>`` twin so a container or a service manager can
configure the engine without a command line; a flag given explicitly always wins.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.auth import check_token
from engine.downloads import DEFAULT_DOWNLOAD_HOSTS

ENV_PREFIX = "ATELIER_ENGINE_"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7861
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float16", "bfloat16", "float32")
LORA_MODES = ("auto", "patched", "unfused")
#: FLUX transformer storage: fp8 when the file is or the budget needs it, always, or never.
FP8_MODES = ("auto", "on", "off")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}


def parse_size(text: str) -> int:
    """'2GiB', '512MB', '1.5G' or a plain byte count -> bytes (binary units for 'iB')."""
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"'{text}' is not a size; write e.g. 2GiB, 512MB or 1073741824")
    number, unit = float(match.group(1)), (match.group(2) or "").upper()
    base = unit[:1] if unit[:1] in "KMGT" and unit else ""
    factor = 1024 ** "KMGT".index(base) * 1024 if base and "I" in unit else _UNITS[base]
    return int(number * factor)


@dataclass(frozen=True)
class EngineConfig:
    models: Path
    loras: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    unix_socket: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    cache_loras: int = 8
    cache_bytes: int = 2 * 1024**3
    log_level: str = "INFO"
    #: The shared secret every request must carry (see engine.auth). Kept out of repr so
    #: that printing or logging the config never shows it.
    token: str = dataclasses.field(default="", repr=False)
    #: Fetch files into the LoRA folder when the bot asks (``POST /downloads``); off by default.
    allow_downloads: bool = False
    #: Hosts downloads and their redirects may come from (``http://host`` also allows http).
    download_hosts: tuple[str, ...] = DEFAULT_DOWNLOAD_HOSTS
    #: Model cache budgets in bytes; None: automatic (most of the GPU, half the RAM).
    model_device_budget: int | None = None
    model_host_budget: int | None = None
    #: How LoRA stacks are applied: "auto" lets the measured cost model choose per job.
    lora_mode: str = "auto"
    fp8: str = "auto"
    max_batch_images: int = 8
    compile_unet: bool = False

    @property
    def address(self) -> str:
        return f"unix:{self.unix_socket}" if self.unix_socket else f"http://{self.host}:{self.port}"


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", help="folder of base models (.safetensors or diffusers)")
    parser.add_argument("--loras", help="folder of LoRA .safetensors files")
    parser.add_argument("--host", help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, help=f"TCP port (default {DEFAULT_PORT})")
    parser.add_argument("--unix-socket", help="listen on this Unix socket instead of TCP")
    parser.add_argument("--device", choices=DEVICES, help="where to run (default auto)")
    parser.add_argument("--dtype", choices=DTYPES, help="weights precision (default auto)")
    parser.add_argument("--cache-loras", type=int, help="LoRAs kept loaded (default 8)")
    parser.add_argument("--cache-bytes", help="bytes of LoRAs kept loaded (default 2GiB)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING (default INFO)")
    parser.add_argument(
        "--allow-downloads",
        action="store_true",
        default=None,
        help="let the bot have files fetched into the LoRA folder (Civitai LoRAs); off by default",
    )
    parser.add_argument(
        "--download-hosts",
        help="comma-separated hosts downloads may come from, e.g. civitai.com,*.civitai.com "
        "(default: Civitai and its storage hosts); write http://host to allow plain http",
    )
    # No --token flag: a command line is visible to every user of the machine (ps).
    parser.add_argument(
        "--token-file",
        help="file holding the shared secret clients must send (or set ATELIER_ENGINE_TOKEN)",
    )
    parser.add_argument(
        "--model-device-budget",
        help="bytes of models kept on the device (default: 70%% of GPU memory, 60%% of RAM on a CPU)",
    )
    parser.add_argument(
        "--model-host-budget", help="bytes of models parked in RAM off the GPU (default: half the RAM)"
    )
    parser.add_argument(
        "--lora-mode", choices=LORA_MODES,
        help="patch LoRAs into the weights, run them unfused, or let the measured cost decide per job (default auto)",
    )  # fmt: skip
    parser.add_argument(
        "--fp8", choices=FP8_MODES,
        help="FLUX transformer weights in fp8 (computed in bf16): auto = when the file is fp8 or 16 bits "
        "would not fit the device budget (default auto)",
    )  # fmt: skip
    parser.add_argument("--max-batch", type=int, help="images per pipeline call at most (default 8)")
    parser.add_argument(
        "--compile", choices=("on", "off"),
        help="torch.compile the UNet (default off; stacks are then always patched, so switching never recompiles)",
    )  # fmt: skip
    _name_environment(parser)


def _name_environment(parser: argparse.ArgumentParser) -> None:
    """Show each flag's ``ATELIER_ENGINE_*`` twin in ``--help`` (the names :func:`config_from` reads).

    Derived from the flags themselves so that a new flag cannot be left out of the help.
    """
    for action in parser._actions:  # argparse has no public list of a parser's arguments
        if action.dest != "help" and action.option_strings:
            action.help = f"{action.help or ''} [{ENV_PREFIX}{action.dest.upper()}]".strip()
    parser.epilog = (
        f"Each flag can be set instead as the environment variable in brackets ({ENV_PREFIX}<FLAG>); "
        f"a flag given on the command line wins. The shared secret is {ENV_PREFIX}TOKEN (or "
        "--token-file): there is no --token flag, as every user of the machine can read a command line."
    )


def config_from(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> EngineConfig:
    """Merge parsed flags with ``ATELIER_ENGINE_*`` variables and validate the result."""
    env = os.environ if env is None else env

    def pick(name: str) -> str | None:
        value = getattr(args, name, None)
        if value is not None:
            return str(value)
        return env.get(ENV_PREFIX + name.upper()) or None

    missing = [n for n in ("models", "loras") if pick(n) is None]
    if missing:
        flags = " and ".join(f"--{n} (or {ENV_PREFIX}{n.upper()})" for n in missing)
        raise ValueError(f"the engine needs {flags}: the folders it may read files from")
    models, loras = Path(pick("models") or ""), Path(pick("loras") or "")
    for label, folder in (("models", models), ("loras", loras)):
        if not folder.is_dir():
            raise ValueError(
                f"the {label} folder '{folder}' does not exist (--{label} or {ENV_PREFIX}{label.upper()})"
            )
    device = pick("device") or "auto"
    dtype = pick("dtype") or "auto"
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)} (got '{device}')")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)} (got '{dtype}')")
    port = int(pick("port") or DEFAULT_PORT)
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be from 0 to 65535 (got {port})")
    cache_loras = int(pick("cache_loras") or 8)
    if cache_loras < 1:
        raise ValueError("--cache-loras must be at least 1")
    lora_mode = pick("lora_mode") or "auto"
    fp8 = pick("fp8") or "auto"
    if fp8 not in FP8_MODES:
        raise ValueError(f"fp8 must be one of {', '.join(FP8_MODES)} (got '{fp8}')")
    if lora_mode not in LORA_MODES:
        raise ValueError(f"lora-mode must be one of {', '.join(LORA_MODES)} (got '{lora_mode}')")
    max_batch = int(pick("max_batch") or 8)
    if max_batch < 1:
        raise ValueError("--max-batch must be at least 1")
    return EngineConfig(
        token=_token(pick("token_file"), env),
        models=models.resolve(),
        loras=loras.resolve(),
        host=pick("host") or DEFAULT_HOST,
        port=port,
        unix_socket=pick("unix_socket"),
        device=device,
        dtype=dtype,
        cache_loras=cache_loras,
        cache_bytes=parse_size(pick("cache_bytes") or "2GiB"),
        log_level=(pick("log_level") or "INFO").upper(),
        allow_downloads=_flag(pick("allow_downloads")),
        download_hosts=_hosts(pick("download_hosts")),
        model_device_budget=_optional_size(pick("model_device_budget")),
        model_host_budget=_optional_size(pick("model_host_budget")),
        lora_mode=lora_mode,
        fp8=fp8,
        max_batch_images=max_batch,
        compile_unet=_on_off("compile", pick("compile") or "off"),
    )


def _flag(text: str | None) -> bool:
    value = (text or "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"--allow-downloads (ATELIER_ENGINE_ALLOW_DOWNLOADS) must be true or false, not {text!r}")


def _hosts(text: str | None) -> tuple[str, ...]:
    if text is None:
        return DEFAULT_DOWNLOAD_HOSTS
    hosts = tuple(h.strip() for h in text.split(",") if h.strip())
    if not hosts:
        raise ValueError("--download-hosts is empty; leave it out for Civitai's hosts, or list some")
    return hosts


def _token(token_file: str | None, env: Mapping[str, str]) -> str:
    """The token from ``--token-file`` (or ATELIER_ENGINE_TOKEN_FILE), else ATELIER_ENGINE_TOKEN.

    There is deliberately no way to run without one: the engine spends a GPU and reads the
    operator's model folders for whoever can reach its port.
    """
    if token_file:
        try:
            text = Path(token_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read the token file '{token_file}': {exc.strerror}") from exc
        return check_token(text, source=f"'{token_file}'")
    text = env.get(ENV_PREFIX + "TOKEN", "")
    if not text:
        raise ValueError(
            "the engine needs a shared secret: set ATELIER_ENGINE_TOKEN (or --token-file) to a "
            "long random string and give the bot the same value. A bot that starts the engine "
            "itself does this for you."
        )
    return check_token(text, source="ATELIER_ENGINE_TOKEN")
def _optional_size(text: str | None) -> int | None:
    return None if text in (None, "", "auto") else parse_size(text)


def _on_off(name: str, text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError(f"--{name} must be on or off (got '{text}')")


def parse_serve_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> EngineConfig:
    parser = argparse.ArgumentParser(prog="python -m engine serve")
    add_serve_arguments(parser)
    return config_from(parser.parse_args(list(argv)), env)
