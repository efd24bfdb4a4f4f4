"""``python -m engine serve | inspect FILE``.

torch is imported only by ``serve`` (through the generator), so inspecting
a file answers in a fraction of a second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import stat
import sys
from collections.abc import Sequence

from engine.config import EngineConfig, add_serve_arguments, config_from
from engine.protocol import EngineError

log = logging.getLogger("engine")


def resolve_device(device: str, dtype: str) -> tuple[str, str]:
    """'auto' means the GPU when there is one, in half precision; else the CPU in float32.

    float16 on a CPU is slow or unsupported for several ops, so auto never picks it there.
    """
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but torch sees no CUDA GPU here")
    if dtype == "auto":
        if device == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "float16" if device == "mps" else "float32"
    return device, dtype


async def serve(config: EngineConfig) -> None:
    """Run the HTTP server until SIGINT/SIGTERM, then stop the queue and close cleanly."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from aiohttp import web

    from engine.downloads import DownloadManager
    from engine.generate import Generator
    from engine.jobs import JobManager
    from engine.server import create_app, warn_if_exposed

    device, dtype = resolve_device(config.device, config.dtype)
    generator = Generator(
        config.models,
        config.loras,
        device=device,
        dtype=dtype,
        cache_max_loras=config.cache_loras,
        cache_max_bytes=config.cache_bytes,
        model_device_budget=config.model_device_budget,
        model_host_budget=config.model_host_budget,
        lora_mode=config.lora_mode,
        fp8=config.fp8,
        max_batch_images=config.max_batch_images,
        compile_unet=config.compile_unet,
    )
    app = create_app(
        JobManager(generator),
        models_root=config.models,
        loras_root=config.loras,
        token=config.token,
        downloads=DownloadManager(
            config.loras, enabled=config.allow_downloads, allowed_hosts=config.download_hosts
        ),
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    if config.unix_socket:
        _remove_socket(config.unix_socket)
        site: web.BaseSite = web.UnixSite(runner, config.unix_socket)
    else:
        site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    address = config.address
    if not config.unix_socket and config.port == 0:
        sockets = getattr(site._server, "sockets", None) or []  # the OS chose the port
        if sockets:
            address = f"http://{config.host}:{sockets[0].getsockname()[1]}"
    if not config.unix_socket:
        warn_if_exposed(config.host, address)
    health = generator.health()
    log.info(
        "engine ready at %s (device %s, dtype %s; models %s, loras %s; downloads %s)",
        address,
        health.get("device"),
        health.get("dtype"),
        config.models,
        config.loras,
        f"from {', '.join(config.download_hosts)}" if config.allow_downloads else "off",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("engine stopping")
        await runner.cleanup()
        if config.unix_socket:
            _remove_socket(config.unix_socket)
        log.info("engine stopped")


def _remove_socket(path: str) -> None:
    """A socket file left by a killed engine would make binding fail; anything else is kept.

    The path comes from a flag or the environment, so a typo must not delete a real file.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SystemExit(
            f"--unix-socket '{path}' is an existing file that is not a socket; the engine will "
            "not delete it: choose another path"
        )
    os.unlink(path)


def _inspect(target: str) -> int:
    from engine.inspect import inspect_path_for_cli

    try:
        info = inspect_path_for_cli(target)
    except EngineError as exc:
        print(json.dumps(exc.to_json(), indent=2))
        return 2
    print(json.dumps(info.to_json(), indent=2, sort_keys=True))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine",
        description="Atelier's generation engine: serve its HTTP API (the bot starts one itself) "
        "or describe a .safetensors file.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser(
        "serve",
        help="run the generation engine's HTTP API",
        description="Run the generation engine's HTTP API until Ctrl-C or SIGTERM.",
    )
    add_serve_arguments(serve_parser)
    inspect_parser = commands.add_parser(
        "inspect",
        help="describe a .safetensors file",
        description="Print what a .safetensors file is (model, LoRA, VAE, embedding; its family and hashes) as JSON.",
    )
    inspect_parser.add_argument("file", help="a .safetensors file (or a diffusers folder)")
    args, rest = parser.parse_known_args(argv)

    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    if args.command == "inspect":
        return _inspect(args.file)
    try:
        config = config_from(args)
    except ValueError as exc:
        # A setting, not the command line, is wrong: say which in one line, without usage.
        print(f"python -m engine serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
