"""The offline sandbox demo: the whole product on one machine, no token, no network.

``python -m sandbox demo --out DIR`` (what ``make demo`` runs) builds the tiny demo models (random weights, real SD 1.5 and
SDXL architectures), starts the real engine process on them, starts the real bot against the
local Discord double (:mod:`sandbox.discord_double`), and plays a short session through Discord's wire
protocol, as people would: an admin registers the models and LoRAs, a member imagines with a
two-LoRA stack, rerolls, remixes with another weight, and asks for a LoRA of the wrong
architecture, which is refused before the engine spends a step on it. What the channel would
show is written to ``DIR`` (``index.html``, ``transcript.txt`` and the uploaded PNG files).

The demo process itself never imports torch: the models are built by ``python -m sandbox
build-models`` in a child process, and the engine is a child process too, exactly as in
production.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import discord

from bot.assembly import StartError, assembled
from bot.jobs.dispatcher import Dispatcher
from bot.operator.config import BotConfig
from engine.auth import new_token
from sandbox.demo_page import Moments, write_page
from sandbox.discord_double import (
    MANAGE_GUILD,
    Channel,
    DiscordDouble,
    InteractionHandle,
    Member,
    StoredMessage,
    run_bot,
)
from sandbox.discord_double.transcript import write_transcript

#: The scripted member's recipes: the trained demo model's world (sandbox/train_demo/scenes.py)
#: at the size it was trained for, few enough steps for a 2-core CPU.
PROMPT = "a lighthouse by the sea at noon"
NIGHT_PROMPT = "a lighthouse by the sea at night"
#: The LoRAs' trigger words are in the prompts (the bot would add them otherwise).
STYLE_PROMPT = "sepia photo, a lighthouse by the sea at noon"
CHARACTER_PROMPT = "sepia photo, captain nova, a lighthouse by the sea at noon"
STEPS = 14
SIZE = "256x256"
#: Seeds picked where the small model draws its scene cleanly (it is under-trained: some seeds
#: give a muddled picture; see sandbox/demo_weights/README.md).
SEED = 1234  # the model alone: noon against night
LORA_SEED = 99  # the LoRA pictures: the weight strip, the stack and its remix
#: The weights of the weight strip (the same seed and prompt at each).
STRIP = ("0", "0.3", "0.6", "1")
RESULT_TIMEOUT = 240.0
#: How long the demo waits, after the session, for every job to end before it stops the bot.
SETTLE_TIMEOUT = 60.0
HUMAN_PAUSE = 1.0


class DemoError(RuntimeError):
    """A step of the scripted session did not go as it should; the message says which."""


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_assets(folder: Path) -> dict[str, Any]:
    """Build (or reuse) the tiny models in a child process, so this process never loads torch."""
    manifest = folder / "manifest.json"
    started = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "sandbox", "build-models", "--out", str(folder), "--trained"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if result.returncode != 0 or not manifest.is_file():
        raise DemoError(f"building the demo models failed:\n{result.stderr[-3000:]}")
    _say(f"models and LoRAs ready in {folder} ({time.perf_counter() - started:.1f} s)")
    return json.loads(manifest.read_text(encoding="utf-8"))


class Session:
    """The people in the demo channel and the few moves they make."""

    def __init__(
        self, double: DiscordDouble, channel: Channel, admin: Member, member: Member,
        dispatcher: Dispatcher | None = None,
    ) -> None:  # fmt: skip
        self.double = double
        self.channel = channel
        self.admin = admin
        self.member = member
        self.dispatcher = dispatcher

    async def settled(self) -> None:
        """Wait until the member's last job has fully ended (posted, and the member told), as a
        person would before sending the next one: the server holds at most two per member."""
        if self.dispatcher is not None:
            await wait_until_settled(self.dispatcher)

    async def command(
        self, who: Member, name: str, options: dict[str, Any], *, subcommand: str | None = None
    ) -> InteractionHandle:
        label = f"/{name}{' ' + subcommand if subcommand else ''}"
        shown = " ".join(f"{key}:{value}" for key, value in options.items())
        _say(f"{who.user.name} runs {label} {shown}")
        handle = await self.double.slash(who, self.channel, name, options, subcommand=subcommand)
        await handle.wait_response(5)
        if handle.deferred_within is None or handle.deferred_within >= 3:
            raise DemoError(f"{label} was not acknowledged within Discord's 3 seconds")
        return handle

    async def answer(self, handle: InteractionHandle) -> StoredMessage:
        """The bot's (private) answer to a deferred command."""
        return await handle.wait_followup(within=60)

    async def next_result(self, after: set[int], what: str) -> StoredMessage:
        started = time.perf_counter()
        message = await self.double.wait_for_message(
            self.channel,
            lambda m: bool(m.attachments) and not m.ephemeral and m.id not in after,
            within=RESULT_TIMEOUT,
        )
        _say(f"  -> {what}: {len(message.attachments)} image(s) posted after {time.perf_counter() - started:.1f} s")
        return message

    def seen(self) -> set[int]:
        return {m.id for m in self.double.messages(self.channel)}

    async def look_at(self) -> None:
        """A person looks at a new image for a moment before pressing one of its buttons."""
        await asyncio.sleep(HUMAN_PAUSE)


async def play(session: Session, manifest: dict[str, Any], *, steps: int = STEPS, size: str = SIZE) -> Moments:
    """The scripted session. Each step goes through Discord's wire protocol, as a person's would;
    returns its messages by what they teach (for the page)."""
    models: dict[str, str] = manifest["models"]
    demo_loras = [lora for lora in manifest["loras"] if lora.get("purpose", "demo") == "demo"]
    sd15_loras = [lora for lora in demo_loras if lora["architecture"] == "sd15"]
    sdxl_loras = [lora for lora in demo_loras if lora["architecture"] == "sdxl"]
    if len(sd15_loras) < 2 or not sdxl_loras:
        raise DemoError(f"the demo needs two SD 1.5 LoRAs and one SDXL LoRA; the build made {demo_loras}")
    moments = Moments()

    # 1. The admin curates the registry from the files the engine can see.
    for arch, file in sorted(models.items()):
        handle = await session.command(
            session.admin, "model", {"file": file, "name": f"tiny-{arch}", "make_default": arch == "sd15"},
            subcommand="add",
        )  # fmt: skip
        answer = await session.answer(handle)
        moments.admin.append(answer)
        _say(f"  -> {answer.content}")
    for lora in demo_loras:
        options = {
            "file": lora["file"], "name": lora["name"], "category": lora.get("category", "other"),
            "description": lora["description"],
        }  # fmt: skip
        if lora["key_format"] == "diffusers" and lora["trigger_words"]:
            # A diffusers-format file carries no training tags: the admin supplies the trigger word.
            options["trigger_words"] = ", ".join(lora["trigger_words"])
        handle = await session.command(session.admin, "lora", options, subcommand="add")
        answer = await session.answer(handle)
        moments.admin.append(answer)
        _say(f"  -> {answer.content}")

    style = next((lo for lo in sd15_loras if lo.get("category") == "style"), sd15_loras[0])
    character = next((lo for lo in sd15_loras if lo.get("category") == "character" and lo is not style),
                     next(lo for lo in sd15_loras if lo is not style))  # fmt: skip
    base = {"model": "tiny-sd15", "steps": steps, "size": size, "seed": SEED}

    async def imagine(what: str, options: dict[str, Any]) -> StoredMessage:
        before = session.seen()
        await session.command(session.member, "imagine", {**base, **options})
        message = await session.next_result(before, what)
        await session.settled()
        return message

    # 2. The model alone: the prompt decides the picture (night against noon, same seed).
    noon = await imagine("/imagine at noon", {"prompt": PROMPT})
    night = await imagine("/imagine at night", {"prompt": NIGHT_PROMPT})
    # 3. A weight strip: the same seed and prompt with the style LoRA at each weight.
    strip = []
    for weight in STRIP:
        message = await imagine(f"/imagine {style['name']}:{weight}",
                                {"prompt": STYLE_PROMPT, "lora1": style["name"], "weight1": weight,
                                 "seed": LORA_SEED})  # fmt: skip
        strip.append((f"{style['name']} at weight {weight}", message))
    moments.alone = [("at noon", noon), ("at night", night)]
    moments.strip = strip

    # 4. Two LoRAs at once: the character (its trigger word in the prompt) and the style.
    original = await imagine("/imagine with two LoRAs", {
        "prompt": CHARACTER_PROMPT, "lora1": character["name"], "weight1": "1",
        "lora2": style["name"], "weight2": "1", "seed": LORA_SEED,
    })  # fmt: skip

    # 5. Reroll: the same recipe with a new seed.
    await session.look_at()
    _say(f"{session.member.user.name} presses Reroll")
    before = session.seen()
    await session.double.click(session.member, original, "atelier:img:reroll")
    reroll = await session.next_result(before, "Reroll")
    await session.settled()
    moments.stack = [(f"{character['name']} 1 + {style['name']} 1", original), ("Reroll: a new seed", reroll)]

    # 6. Remix: the modal comes prefilled; the member takes the style LoRA out (weight 0).
    _say(f"{session.member.user.name} presses Remix and sets {style['name']} to 0")
    click = await session.double.click(session.member, original, "atelier:img:remix")
    await click.wait_response(3)
    if click.modal is None:
        raise DemoError(f"Remix did not open a modal: {click.responses}")
    before = session.seen()
    await session.double.submit_modal(
        session.member, click, {"loras": f"{character['name']}:1\n{style['name']}:0"}
    )
    remix = await session.next_result(before, "Remix")
    moments.remix = [("the original", original), (f"Remix: {style['name']} at 0", remix)]

    # 7. A LoRA trained for SDXL on the SD 1.5 model: refused before any GPU time is spent.
    wrong = sdxl_loras[0]
    handle = await session.command(
        session.member, "imagine",
        {"prompt": PROMPT, "model": "tiny-sd15", "lora1": wrong["name"], "weight1": "0.7", "steps": steps},
    )  # fmt: skip
    refusal = await session.answer(handle)
    if not refusal.ephemeral:
        raise DemoError("the refusal should be visible only to the member who asked")
    _say("  -> refused, privately:")
    for line in shown_text(refusal).splitlines():
        _say(f"     {line}")
    moments.refusal, moments.refusal_text = refusal, shown_text(refusal)
    moments.notes = {
        "alone": f"The same seed ({SEED}) and the same words, one changed: 'noon' or 'night'. The model "
                 "learned what each word looks like from its captions. It is under-trained: its noon "
                 "can look like a warm evening, but its night is unmistakable.",
        "strip": f"The same prompt and seed ({LORA_SEED}) with the {style['name']} LoRA ({style['description']}) at "
                 f"weights {', '.join(STRIP)}. The weight scales what the LoRA adds to the model's "
                 "weights, so the style fades in.",
        "stack": f"{character['name']} ({character['description']}) is called by its trigger words in the "
                 f"prompt; {style['name']} is stacked on top. Reroll keeps the recipe and draws a new seed. "
                 "This small model draws the captain only roughly (pale figures with a touch of red), "
                 "but with both LoRAs the picture is sepia and holds shapes that sepia alone does not.",
        "remix": f"Remix opens the recipe prefilled; here the member set {style['name']} to 0 and kept "
                 "everything else, seed included.",
        "refusal": f"{wrong['name']} was made for SDXL; the bot checks a LoRA against the model before "
                   "queueing the job and tells only the member who asked.",
    }
    return moments


def shown_text(message: StoredMessage) -> str:
    """What the member reads in ``message``: Discord renders the markdown, so the console
    shows the text without its ``**`` and backticks (and embeds' titles and descriptions)."""
    parts = [message.content, *(
        part for embed in message.embeds for part in (embed.get("title"), embed.get("description")) if part
    )]  # fmt: skip
    return discord.utils.remove_markdown("\n".join(p for p in parts if p), ignore_links=True)


async def wait_until_settled(dispatcher: Dispatcher, within: float = SETTLE_TIMEOUT) -> None:
    """Every job ended and its member told, before the bot is stopped: a demo that stopped it
    earlier would show a stop, not the product (a job cut off in its last step)."""
    left = await dispatcher.wait_settled(within)
    if left:
        states = ", ".join(f"{job.origin} job {job.id[:8]} is {job.state.value}" for job in left)
        raise DemoError(f"the jobs had not all ended {within:.0f} s after the session: {states}")


def prepare(out: Path, assets: Path) -> dict[str, Any]:
    """Build the assets and clear what an earlier run left in ``out``; returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = build_assets(assets)
    for stale in ("atelier.sqlite3", "atelier.sqlite3-wal", "atelier.sqlite3-shm", "files"):
        path = out / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return manifest


async def run_demo(
    out: Path, assets: Path, manifest: dict[str, Any], *, steps: int = STEPS, size: str = SIZE
) -> Path:
    """Start the engine, the double and the bot, play the session, write what the channel shows.

    The bot and its engine are built by :func:`bot.assembly.assembled`, as ``python -m bot``
    builds them, from the settings an operator would give: only Discord is the double."""
    config = BotConfig(
        data_dir=out,
        model_dir=assets / "models",
        lora_dir=assets / "loras",
        engine_port=_free_port(),
        engine_start_timeout=180.0,
        engine_token=new_token(),  # as `python -m bot` does when it starts its own engine
        status_interval=1.0,
        image_classifier="off",
    )
    async with DiscordDouble() as double:
        guild = double.add_guild("Atelier demo")
        channel = double.add_channel(guild, "studio")
        admin = double.add_member(guild, "ada-admin", permissions=MANAGE_GUILD)
        member = double.add_member(guild, "milo")
        async with assembled(config, guild_ready_timeout=0.1) as bot:
            engine_process = bot.engines.slots[0].process
            _say(f"engine process {engine_process and engine_process.pid} serving on {bot.engine.base_url}")
            async with run_bot(bot, double):
                _say(f"bot connected to the local Discord double at {double.base_url}")
                started = time.perf_counter()
                session = Session(double, channel, admin, member, bot.dispatcher)
                moments = await play(session, manifest, steps=steps, size=size)
                await wait_until_settled(bot.dispatcher)
                _say(f"scripted session played in {time.perf_counter() - started:.1f} s")
        transcript = write_transcript(double, channel, out, title="Atelier sandbox: #studio")
        names = {user_id: user.name for user_id, user in double.users.items()}
        page = write_page(out, moments, names)
    _say(f"wrote {page}, {transcript.text} and {len(transcript.files)} uploaded file(s) in {transcript.folder / 'files'}")
    return page


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox demo",
        description="Play a scripted session against a local Discord double and tiny models, offline.",
    )
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="where to write what the channel shows")
    parser.add_argument("--assets", type=Path, help="where to build the tiny models (default: OUT/assets)")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"denoising steps per image (default {STEPS})")
    parser.add_argument("--size", default=SIZE, help=f"image size, one of /imagine's choices (default {SIZE})")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        assets = args.assets or args.out / "assets"
        manifest = prepare(args.out, assets)
        page = asyncio.run(run_demo(args.out, assets, manifest, steps=args.steps, size=args.size))
    except (DemoError, StartError) as exc:
        print(f"[demo] failed: {exc}", file=sys.stderr)
        return 1
    _say(f"done in {time.perf_counter() - started:.1f} s. Open {page.resolve()} in a browser.")
    if "torch" in sys.modules:  # the bot side must stay torch-free; say so loudly if it did not
        print("[demo] warning: torch was imported by the bot process", file=sys.stderr)
    return 0
