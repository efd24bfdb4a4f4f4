"""``/imagine``: one model, up to three LoRA slots (more inline), and the usual knobs.

Weights are STRING options on purpose: Discord would reject ``0,7`` or ``.7.1`` in a number
option with a generic client-side error, while the validator can say exactly what is wrong
and list it together with every other problem.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import discord
from discord import app_commands

from bot.ui import views
from bot.ui.cogs.cog import FeatureCog
from bot.ui.common import nsfw_channel, send_private, to_choices
from bot.ui.features import features_of
from bot.ui.routes import ButtonWork, ModalWork
from engine import arch as architectures
from engine.recipe.picture import RESIZE_MODES
from engine.recipe.sampler_names import SAMPLERS as ALL_SAMPLERS

#: A1111 sampler names the engine maps to diffusers schedulers that some runnable architecture
#: runs, in the shared list's order (Discord shows 25 choices); the validator checks the model's.
SAMPLERS = tuple(
    s for s in ALL_SAMPLERS
    if any(s in architectures.ARCHITECTURES[name].samplers for name in architectures.runnable())
)[:25]
#: A size any architecture's rules let through, offered last for quick drafts.
_DRAFT = ("256×256 · draft", "256x256")


def offered_sizes() -> tuple[tuple[str, str], ...]:
    """The size menu: each runnable architecture's presets (from its module in engine.arch),
    labelled with it, a size two architectures share shown once (under the first), then the
    draft; at most Discord's 25 choices. The validator checks the size against the model."""
    sizes: dict[str, str] = {}
    for name in architectures.runnable():
        spec = architectures.ARCHITECTURES[name]
        for label, value in spec.size.presets if spec.size else ():
            sizes.setdefault(value, f"{label} ({spec.label})")
    sizes.pop(_DRAFT[1], None)
    # The draft size stays however many architectures offer presets (Discord shows 25).
    return (*tuple((label, value) for value, label in sizes.items())[:24], _DRAFT)


#: Sizes offered; "WxH" values.
SIZES = offered_sizes()


def parse_size(text: str) -> tuple[int, int] | None:
    """``"512x768"`` -> (512, 768); None for anything that is not one of the offered sizes."""
    if text not in {value for _, value in SIZES}:
        return None
    width, height = text.split("x")
    return int(width), int(height)


async def model_autocomplete(interaction: discord.Interaction[Any], current: str) -> list[app_commands.Choice[str]]:
    return await model_choices(interaction, current)


async def model_choices(interaction: discord.Interaction[Any], current: str,
                        where: Callable[[Any], bool] | None = None) -> list[app_commands.Choice[str]]:  # fmt: skip
    """The models a member may pick here (channel, NSFW policy), those ``where`` accepts."""
    if interaction.guild_id is None:
        return []
    bot = features_of(interaction)
    choices = await bot.registry.models.autocomplete(
        interaction.guild_id,
        current,
        channel_id=interaction.channel_id,
        nsfw_ok=await bot.actions.nsfw_ok(interaction.guild_id, nsfw_channel(interaction)),
        where=where,
    )
    return to_choices(choices)


async def lora_autocomplete(interaction: discord.Interaction[Any], current: str) -> list[app_commands.Choice[str]]:
    """Only LoRAs for the architecture of the model already chosen in this command."""
    if interaction.guild_id is None:
        return []
    return await lora_choices(interaction, current, await features_of(interaction).actions.chosen_model(interaction))


async def lora_choices(interaction: discord.Interaction[Any], current: str, chosen: Any) -> list[app_commands.Choice[str]]:
    """LoRAs for the architecture (and family) of ``chosen``, a registry model or None."""
    assert interaction.guild_id is not None
    bot = features_of(interaction)
    choices = await bot.registry.loras.autocomplete(
        interaction.guild_id,
        current,
        architecture=chosen.architecture if chosen else None,
        family=chosen.family if chosen and chosen.family != "unknown" else None,
        nsfw_ok=await bot.actions.nsfw_ok(interaction.guild_id, nsfw_channel(interaction)),
    )
    return to_choices(choices)


async def text_with_embeddings(interaction: discord.Interaction[Any], current: str) -> list[app_commands.Choice[str]]:
    """Completes the last word typed into an embedding's name ("easyn" -> "EasyNegative").

    The first choice is the text as typed, so Enter keeps it; Discord caps a choice's value at
    100 characters, so longer texts get no suggestions (they are still sent as typed).
    """
    if interaction.guild_id is None or len(current) > 100:
        return []
    head, _, last = current.rpartition(" ")
    word = last.lstrip("(,[")
    if len(word) < 2:
        return []
    bot = features_of(interaction)
    architecture = await bot.actions.chosen_architecture(interaction)
    found = await bot.registry.embeddings.autocomplete(
        interaction.guild_id,
        word,
        architecture=architecture,
        nsfw_ok=await bot.actions.nsfw_ok(interaction.guild_id, nsfw_channel(interaction)),
    )
    prefix = current[: len(current) - len(word)]
    texts = [current] + [prefix + e.name for e in found if prefix + e.name != current]
    return [app_commands.Choice(name=t[:100], value=t) for t in texts[:25] if 0 < len(t) <= 100]


@app_commands.command(name="imagine", description="Generate an image from a model, a LoRA stack and a prompt")
@app_commands.guild_only()
@app_commands.describe(
    prompt="What to draw; LoRAs may also be written inline as <lora:name:0.7>",
    model="Base model (default: the server's default model)",
    lora1="First LoRA (only those made for the chosen model are offered)",
    weight1="Weight of the first LoRA, e.g. 0.8 (default: the LoRA's default)",
    lora2="Second LoRA",
    weight2="Weight of the second LoRA",
    lora3="Third LoRA",
    weight3="Weight of the third LoRA",
    negative="What to avoid",
    sampler="Sampler (default: the model's)",
    steps="Denoising steps (default: the model's)",
    cfg="How strictly to follow the prompt (CFG scale)",
    seed="Seed for a reproducible image (default: random)",
    size="Image size (default: the model's)",
    count="How many images (1-4)",
    clip_skip="Clip skip: 2 reads the text encoder's penultimate layer (default: the model's)",
    recipe="A recipe code (AT1.…) from a recipe card; the other options you give change it",
    image="A picture to start from (PNG, JPEG or WebP): image-to-image",
    strength="With image: 0 keeps the picture, 1 keeps only its size (default 0.6)",
    resize="With image: how a picture of another shape is fitted (default: crop and resize)",
    speed="fast: the model's speed LoRA and few steps; normal: not even in the server's fast mode",
    shift="FLUX, Z-Image, Qwen-Image: flow-matching shift, e.g. 3 (default: the model's or speed LoRA's)",
)
@app_commands.choices(
    speed=[app_commands.Choice(name="fast", value="fast"), app_commands.Choice(name="normal", value="normal")],
    sampler=[app_commands.Choice(name=s, value=s) for s in SAMPLERS],
    size=[app_commands.Choice(name=label, value=value) for label, value in SIZES],
    resize=[app_commands.Choice(name=label, value=value) for value, label in RESIZE_MODES.items()],
)
@app_commands.autocomplete(
    model=model_autocomplete,
    lora1=lora_autocomplete,
    lora2=lora_autocomplete,
    lora3=lora_autocomplete,
    negative=text_with_embeddings,
)
async def imagine(
    interaction: discord.Interaction[Any],
    prompt: app_commands.Range[str, 1, 6000] | None = None,
    model: app_commands.Range[str, 1, 100] | None = None,
    lora1: app_commands.Range[str, 1, 100] | None = None,
    weight1: app_commands.Range[str, 1, 32] | None = None,
    lora2: app_commands.Range[str, 1, 100] | None = None,
    weight2: app_commands.Range[str, 1, 32] | None = None,
    lora3: app_commands.Range[str, 1, 100] | None = None,
    weight3: app_commands.Range[str, 1, 32] | None = None,
    negative: app_commands.Range[str, 0, 6000] | None = None,
    sampler: str | None = None,
    steps: app_commands.Range[int, 1, 150] | None = None,
    cfg: app_commands.Range[float, 0.0, 30.0] | None = None,
    seed: app_commands.Range[int, 0, 2**53 - 1] | None = None,
    size: str | None = None,
    count: app_commands.Range[int, 1, 4] | None = None,
    clip_skip: app_commands.Range[int, 1, 12] | None = None,
    recipe: app_commands.Range[str, 1, 6000] | None = None,
    image: discord.Attachment | None = None,
    strength: app_commands.Range[float, 0.0, 1.0] | None = None,
    resize: str | None = None,
    speed: str | None = None,
    shift: app_commands.Range[float, 0.0, 20.0] | None = None,
) -> None:
    # Acknowledge first: everything after this may take longer than Discord's 3 seconds.
    await interaction.response.defer(ephemeral=True, thinking=True)
    picture = None
    if image is not None:
        # Fetched, checked, screened and kept before anything else (bot.ui.pictures).
        picture = await features_of(interaction).pictures.imagine_choice(interaction, image, strength, resize)
        if picture is None:
            return
    elif strength is not None or resize is not None:
        await send_private(interaction, "`strength` and `resize` go with `image`: attach a picture to start from.")
        return
    width = height = None
    if size:
        parsed = parse_size(size)
        if parsed is None:
            # A client that has not reloaded the command list can still send a size that is
            # no longer offered (or anything at all): say so instead of failing.
            offered = ", ".join(f"`{value}`" for _, value in SIZES)
            await send_private(
                interaction,
                f"Size `{size[:40]}` is not one of the sizes offered ({offered}). Pick one from "
                "the list; if it looks different, reload Discord (Ctrl+R) to get the current one.",
            )
            return
        width, height = parsed
    slots = [(lora1, weight1), (lora2, weight2), (lora3, weight3)]
    if recipe:
        from engine.recipe.share_code import ShareCodeError, decode

        try:
            base = decode(recipe)
        except ShareCodeError as exc:
            await send_private(interaction, f"That recipe code can't be read: {exc}.")
            return
        given = {"prompt": prompt, "model": model, "negative": negative, "sampler": sampler, "steps": steps,
                 "cfg": cfg, "seed": seed, "width": width, "height": height, "count": count,
                 "clip_skip": clip_skip, "shift": shift}  # fmt: skip
        changes: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        if any(name for name, _ in slots):
            changes["slots"] = slots
        if picture is not None:
            changes["picture"] = picture
        if speed is not None:
            changes["speed"] = speed
        await features_of(interaction).actions.rerun(interaction, base, origin="recipe code", **changes)
        return
    if not prompt:
        await send_private(interaction, "Describe the image in `prompt`, or paste a recipe code in `recipe`.")
        return
    await features_of(interaction).actions.imagine(
        interaction,
        prompt=prompt,
        model=model,
        slots=slots,
        negative=negative,
        sampler=sampler,
        steps=steps,
        cfg=cfg,
        seed=seed,
        width=width,
        height=height,
        count=count,
        clip_skip=clip_skip,
        picture=picture,
        speed=speed,
        shift=shift,
    )


class ImagineCog(FeatureCog, name="imagine"):
    feature_commands = (imagine,)

    def buttons(self) -> Mapping[type[Any], ButtonWork]:
        f = self.features
        return {
            views.ImageButton: lambda i, item: f.image_buttons.image_button(i, item.action),
            views.CancelButton: lambda i, item: f.actions.cancel_job(i, item.job_id),
        }

    def modals(self) -> Mapping[str, ModalWork]:
        f = self.features
        return {"remix": lambda i, kind, target, fields: f.image_buttons.remix_submit(i, target, fields)}
