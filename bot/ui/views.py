"""Buttons and modals whose custom ids stay valid across restarts.

Every button is a :class:`discord.ui.DynamicItem`: discord.py matches the custom id of any
click against the templates below, even on a message posted by an earlier process, so no
view has to be re-registered per message. The state a button needs (the recipe behind an
image, the LoRA a card shows) is looked up in the database by message id or entry id, never
kept in memory. Custom id scheme (all ≤ 100 characters, checked in tests):

- ``atelier:img:<action>`` on result messages, action one of reroll/remix/recipe/save/share/
  delete; the recipe is found by the clicked message's id.
- ``atelier:card:<action>:<card id>`` on recipe cards, action use/same/remix/save/share; the
  card (recipe, author, where it came from) is a row of ``recipe_cards``.
- ``atelier:cancel:<job id>`` on status messages (32 hex digits).
- ``atelier:lora:<action>:<lora id>`` on LoRA cards, action edit/remove/lookup ("Look up on
  Civitai", by the file's sha256).
- ``atelier:civitai:apply:<lora id>:<version id>`` under a look-up's proposal; the version is
  looked up again and must contain the LoRA's file before anything changes.
- ``atelier:cancelmine`` under ``/queue``: cancels every job of the clicking member there.
- ``atelier:privacy:delete:<user id>:<0|1>`` under ``/privacy delete`` (1: images too).
- ``atelier:remix:<message id>``, ``atelier:remixcard:<card id>``, ``atelier:savepost:<message
  id>``, ``atelier:savecard:<card id>`` and ``atelier:loraedit:<lora id>`` on modals.

Modal submits are not left to discord.py's modal store: it keys open modals by custom id
alone and lives in memory, so a second member remixing the same image replaced the first
one's modal (and then one submit was dropped), and a modal open across a restart went
nowhere. :func:`parse_modal_submit` reads the submitted payload instead and
``bot.ui.routes`` routes it to the feature that owns it, so the modal classes here only draw the form.

The work behind each click lives in the feature that registers the button (see
:mod:`bot.ui.routes`); this module is only the UI shape and imports no feature.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import discord

CUSTOM_ID_LIMIT = 100
#: Discord's limit for a text input's value (and its prefilled text).
TEXT_INPUT_LIMIT = 4000
MODAL_ID = re.compile(r"atelier:(?P<kind>remix|loraedit|remixcard|savepost|savecard|startimage|editimage):(?P<target>\d{1,20})")
IMAGE_ACTIONS = ("reroll", "remix", "recipe", "save", "share", "delete")
_LABELS = {
    "reroll": ("Reroll", "🎲", discord.ButtonStyle.primary),
    "remix": ("Remix", "🎛️", discord.ButtonStyle.secondary),
    "recipe": ("Recipe", "📜", discord.ButtonStyle.secondary),
    "save": ("Save recipe", "💾", discord.ButtonStyle.secondary),
    "share": ("Share", "📣", discord.ButtonStyle.secondary),
    "delete": ("Delete", "🗑️", discord.ButtonStyle.danger),
}
#: The picture buttons under every result (issue 20): image-to-image of it, or its upscale.
PICTURE_ACTIONS = ("vary_subtle", "vary_strong", "upscale")
_PICTURE_LABELS = {
    "vary_subtle": ("Vary (subtle)", "🪄", discord.ButtonStyle.secondary),
    "vary_strong": ("Vary (strong)", "🌀", discord.ButtonStyle.secondary),
    "upscale": ("Upscale ×2", "🔍", discord.ButtonStyle.secondary),
}
CARD_ACTIONS = ("use", "same", "remix", "save", "share")
_CARD_LABELS = {
    "use": ("Use this recipe", "🎲", discord.ButtonStyle.primary),
    "same": ("Same seed", "🔁", discord.ButtonStyle.secondary),
    "remix": ("Remix", "🎛️", discord.ButtonStyle.secondary),
    "save": ("Save", "💾", discord.ButtonStyle.secondary),
    "share": ("Share to channel", "📣", discord.ButtonStyle.success),
}


class Router(Protocol):
    """Where clicks go (bot.ui.routes.Routes): each feature registers its buttons there."""

    async def press(self, interaction: discord.Interaction[Any], item: discord.ui.DynamicItem[Any]) -> None: ...


async def _press(interaction: discord.Interaction[Any], item: discord.ui.DynamicItem[Any]) -> None:
    """Hand a click to the feature that owns ``item``. discord.py rebuilds a DynamicItem from
    its custom id with nothing but the interaction, so the client's table is reached here."""
    router: Router = interaction.client.routes  # type: ignore[attr-defined]
    await router.press(interaction, item)


class ImageButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"atelier:img:(?P<action>reroll|remix|recipe|delete|save|share)",
):
    def __init__(self, action: str) -> None:
        label, emoji, style = _LABELS[action]
        super().__init__(
            discord.ui.Button(label=label, emoji=emoji, style=style, custom_id=f"atelier:img:{action}")
        )
        self.action = action

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> ImageButton:
        return cls(match["action"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _press(interaction, self)


class PictureButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"atelier:pic:(?P<action>vary_subtle|vary_strong|upscale)",
):
    """Vary (subtle), Vary (strong) and Upscale x2 under a result (bot.ui.pictures)."""

    def __init__(self, action: str) -> None:
        label, emoji, style = _PICTURE_LABELS[action]
        super().__init__(
            discord.ui.Button(label=label, emoji=emoji, style=style, custom_id=f"atelier:pic:{action}")
        )
        self.action = action

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> PictureButton:
        return cls(match["action"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _press(interaction, self)


class CancelButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"atelier:cancel:(?P<job>[0-9a-f]{32})"
):
    def __init__(self, job_id: str) -> None:
        super().__init__(
            discord.ui.Button(
                label="Cancel", emoji="✖️", style=discord.ButtonStyle.secondary, custom_id=f"atelier:cancel:{job_id}"
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> CancelButton:
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _press(interaction, self)


_LORA_CARD_LABELS = {
    "edit": ("Edit", None, discord.ButtonStyle.primary),
    "remove": ("Remove", None, discord.ButtonStyle.danger),
    "lookup": ("Look up on Civitai", "🔎", discord.ButtonStyle.secondary),
}


class LoraCardButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"atelier:lora:(?P<action>edit|remove|lookup):(?P<lora>\d{1,20})",
):
    def __init__(self, action: str, lora_id: int) -> None:
        label, emoji, style = _LORA_CARD_LABELS[action]
        super().__init__(
            discord.ui.Button(label=label, emoji=emoji, style=style, custom_id=f"atelier:lora:{action}:{lora_id}")
        )
        self.action = action
        self.lora_id = lora_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> LoraCardButton:
        return cls(match["action"], int(match["lora"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _press(interaction, self)


class CivitaiApplyButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"atelier:civitai:apply:(?P<lora>\d{1,20}):(?P<version>\d{1,12})",
):
    """Applies what "Look up on Civitai" proposed (see bot.sources.actions)."""

    def __init__(self, lora_id: int, version_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Apply", emoji="✅", style=discord.ButtonStyle.success,
                custom_id=f"atelier:civitai:apply:{lora_id}:{version_id}",
            )
        )  # fmt: skip
        self.lora_id = lora_id
        self.version_id = version_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> CivitaiApplyButton:
        return cls(int(match["lora"]), int(match["version"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _press(interaction, self)


class CardButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"atelier:card:(?P<action>use|same|remix|save|share):(?P<card>\d{1,20})",
):
    """A recipe card's buttons; the card (its recipe, author, source) is found by id."""

    def __init__(self, action: str, card_id: int) -> None:
        label, emoji, style = _CARD_LABELS[action]
        super().__init__(
            discord.ui.Button(label=label, emoji=emoji, style=style, custom_id=f"atelier:card:{action}:{card_id}")
        )
        self.action = action
        self.card_id = card_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> CardButton:
        return cls(match["action"], int(match["card"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _press(interaction, self)


class PrivacyDeleteButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"atelier:privacy:delete:(?P<user>\d{1,20}):(?P<images>[01])",
):
    """The confirmation under ``/privacy delete``; only the member it names can press it."""

    def __init__(self, user_id: int, images: bool) -> None:
        super().__init__(
            discord.ui.Button(
                label="Delete my data" + (" and images" if images else ""),
                emoji="🗑️",
                style=discord.ButtonStyle.danger,
                custom_id=f"atelier:privacy:delete:{user_id}:{int(images)}",
            )
        )
        self.user_id = user_id
        self.images = images

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> PrivacyDeleteButton:
        return cls(int(match["user"]), match["images"] == "1")

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _press(interaction, self)


class CancelMineButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"atelier:cancelmine"):
    """Under ``/queue``: cancels every job of the member who presses it, in that server."""

    def __init__(self) -> None:
        super().__init__(
            discord.ui.Button(
                label="Cancel all my jobs", emoji="✖️", style=discord.ButtonStyle.danger,
                custom_id="atelier:cancelmine",
            )
        )

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> CancelMineButton:
        return cls()

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _press(interaction, self)


DYNAMIC_ITEMS = (
    ImageButton, CancelButton, LoraCardButton, CardButton, PrivacyDeleteButton, CancelMineButton, CivitaiApplyButton,
    PictureButton,
)


def detached(view: discord.ui.View) -> discord.ui.View:
    """``view`` with its components sent, but not kept by discord.py for the message.

    Every button here is a DynamicItem registered once on the client, so discord.py's
    per-message copy of the view would only grow with every status reply and image.
    """
    view.stop()
    return view


def card_view(card_id: int, *, shareable: bool = False) -> discord.ui.View:
    """Use / Same seed / Remix / Save, plus Share to channel on private answers."""
    view = discord.ui.View(timeout=None)
    for action in CARD_ACTIONS:
        if action != "share" or shareable:
            view.add_item(CardButton(action, card_id))
    return view


def result_view() -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in IMAGE_ACTIONS:
        view.add_item(ImageButton(action))
    for action in PICTURE_ACTIONS:
        view.add_item(PictureButton(action))
    return view


def status_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


def queue_view() -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelMineButton())
    return view


def lora_card_view(lora_id: int, *, lookup: bool = True) -> discord.ui.View:
    """Edit / Remove, and "Look up on Civitai" (left out for a LoRA that came from there)."""
    view = discord.ui.View(timeout=None)
    view.add_item(LoraCardButton("edit", lora_id))
    view.add_item(LoraCardButton("remove", lora_id))
    if lookup:
        view.add_item(LoraCardButton("lookup", lora_id))
    return view


def civitai_apply_view(lora_id: int, version_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CivitaiApplyButton(lora_id, version_id))
    return view


class RemixModal(discord.ui.Modal):
    """Prefilled with the image's recipe; five inputs, Discord's maximum."""

    def __init__(
        self,
        *,
        message_id: int,
        prompt: str,
        negative: str,
        loras: str,
        seed: str,
        steps: str,
        kind: str = "remix",
        title: str = "Remix this image",
    ) -> None:
        super().__init__(title=title, custom_id=f"atelier:{kind}:{message_id}", timeout=900)
        self.message_id = message_id
        self.prompt = discord.ui.TextInput(
            custom_id="prompt", label="Prompt", style=discord.TextStyle.paragraph, default=prompt[:TEXT_INPUT_LIMIT], max_length=TEXT_INPUT_LIMIT
        )
        self.negative = discord.ui.TextInput(
            custom_id="negative",
            label="Negative prompt",
            style=discord.TextStyle.paragraph,
            default=negative[:TEXT_INPUT_LIMIT] or None,
            required=False,
            max_length=TEXT_INPUT_LIMIT,
        )
        self.loras = discord.ui.TextInput(
            custom_id="loras",
            label="LoRAs, one per line as name:weight",
            style=discord.TextStyle.paragraph,
            default=loras[:TEXT_INPUT_LIMIT] or None,
            required=False,
            max_length=TEXT_INPUT_LIMIT,
        )
        self.seed = discord.ui.TextInput(custom_id="seed", label="Seed (empty = random)", default=seed, required=False, max_length=20)
        self.steps = discord.ui.TextInput(custom_id="steps", label="Steps", default=steps, required=False, max_length=4)
        for item in (self.prompt, self.negative, self.loras, self.seed, self.steps):
            self.add_item(item)


class StartImageModal(discord.ui.Modal):
    """"Use as starting image": what to make of the image, and how much of it to keep."""

    def __init__(self, *, message_id: int, prompt: str, strength: str) -> None:
        super().__init__(title="Use as starting image", custom_id=f"atelier:startimage:{message_id}", timeout=900)
        self.prompt = discord.ui.TextInput(
            custom_id="prompt", label="Prompt", style=discord.TextStyle.paragraph, default=prompt[:TEXT_INPUT_LIMIT] or None,
            max_length=TEXT_INPUT_LIMIT,
        )
        self.strength = discord.ui.TextInput(
            custom_id="strength", label="Strength: 0 keeps the image, 1 only its size", default=strength, max_length=10
        )
        self.add_item(self.prompt)
        self.add_item(self.strength)


class EditImageModal(discord.ui.Modal):
    """"Edit this image": the instruction, and the edit model where the server has several."""

    def __init__(self, *, message_id: int, model: str, ask_model: bool) -> None:
        super().__init__(title="Edit this image", custom_id=f"atelier:editimage:{message_id}", timeout=900)
        self.instruction = discord.ui.TextInput(
            custom_id="instruction", label="Instruction, e.g. make the sky red", style=discord.TextStyle.paragraph,
            max_length=TEXT_INPUT_LIMIT,
        )
        self.add_item(self.instruction)
        if ask_model:
            # A text input (prefilled with the first), checked like /imagine's model option: a
            # name this server lacks is answered with suggestions.
            self.model = discord.ui.TextInput(custom_id="model", label="Edit model", default=model[:100], max_length=100)
            self.add_item(self.model)


class SaveRecipeModal(discord.ui.Modal):
    """The member names the recipe (a suggestion is prefilled) and picks where it goes."""

    def __init__(self, *, kind: str, target: int, name: str, scope: str) -> None:
        super().__init__(title="Save this recipe", custom_id=f"atelier:{kind}:{target}", timeout=900)
        self.name = discord.ui.TextInput(
            custom_id="name", label="Name (letters, digits, spaces, - or _)", default=name, min_length=1, max_length=64
        )
        self.scope = discord.ui.TextInput(
            custom_id="scope", label="Keep it for: server (recipe book) or me", default=scope, max_length=20
        )
        self.add_item(self.name)
        self.add_item(self.scope)


def lora_edit_values(lora: Any) -> dict[str, str]:
    """The Edit modal's prefilled text for ``lora`` (a registry LoraEntry), cut to Discord's limit.

    The submit applies only the inputs whose text differs from this, so a description longer
    than a text input can hold is kept whole unless the admin actually rewrites it.
    """
    values = {
        "trigger_words": ", ".join(lora.trigger_words),
        "default_weight": f"{lora.default_weight:g}",
        "weight_range": f"{lora.recommended_min:g}-{lora.recommended_max:g}",
        "category": lora.category.value,
        "description": lora.description,
    }
    return {key: value[:TEXT_INPUT_LIMIT] for key, value in values.items()}


class LoraEditModal(discord.ui.Modal):
    """What an admin corrects after ``/lora add``: the engine cannot guess these well."""

    def __init__(
        self,
        *,
        lora_id: int,
        trigger_words: str,
        default_weight: str,
        weight_range: str,
        category: str,
        description: str,
    ) -> None:
        super().__init__(title="Edit LoRA", custom_id=f"atelier:loraedit:{lora_id}", timeout=900)
        self.lora_id = lora_id
        self.trigger_words = discord.ui.TextInput(
            custom_id="trigger_words", label="Trigger words (comma separated)", default=trigger_words or None, required=False,
            style=discord.TextStyle.paragraph, max_length=TEXT_INPUT_LIMIT
        )
        self.default_weight = discord.ui.TextInput(custom_id="default_weight", label="Default weight", default=default_weight, max_length=10)
        self.weight_range = discord.ui.TextInput(
            custom_id="weight_range", label="Recommended range (min-max)", default=weight_range, max_length=25
        )
        self.category = discord.ui.TextInput(custom_id="category", label="Category", default=category, max_length=20)
        self.description = discord.ui.TextInput(
            custom_id="description",
            label="Description",
            style=discord.TextStyle.paragraph,
            default=description[:TEXT_INPUT_LIMIT] or None,
            required=False,
            max_length=TEXT_INPUT_LIMIT,
        )
        for item in (self.trigger_words, self.default_weight, self.weight_range, self.category, self.description):
            self.add_item(item)


def _text_inputs(components: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    values: dict[str, str] = {}
    for component in components:
        if component.get("type") == 1:  # action row (the classic layout)
            values.update(_text_inputs(component.get("components") or []))
        elif component.get("type") == 18:  # label wrapping one input (the newer layout)
            values.update(_text_inputs([component.get("component") or {}]))
        elif component.get("custom_id") is not None:
            values[str(component["custom_id"])] = str(component.get("value") or "")
    return values


def parse_modal_submit(data: Mapping[str, Any]) -> tuple[str, int, dict[str, str]] | None:
    """(kind, target id, text input values) of one of our modals' submit payload, else None."""
    match = MODAL_ID.fullmatch(str(data.get("custom_id", "")))
    if match is None:
        return None
    return match["kind"], int(match["target"]), _text_inputs(data.get("components") or [])


def privacy_delete_view(user_id: int, images: bool) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(PrivacyDeleteButton(user_id, images))
    return view
