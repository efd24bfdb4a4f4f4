"""Discord's server-side rules, checked the way Discord checks them.

discord.py validates almost nothing before sending (embed totals, choice counts, file sizes are
all the server's job), so a bot that breaks a rule only finds out in production. The double runs
every payload through these checks and answers like Discord does: HTTP 400 with code 50035
"Invalid Form Body" and a nested ``errors`` object pointing at the offending field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

MESSAGE_CONTENT_MAX = 2000
EMBEDS_MAX = 10
EMBED_TITLE_MAX = 256
EMBED_DESCRIPTION_MAX = 4096
EMBED_FIELDS_MAX = 25
EMBED_FIELD_NAME_MAX = 256
EMBED_FIELD_VALUE_MAX = 1024
EMBED_FOOTER_MAX = 2048
EMBED_AUTHOR_MAX = 256
EMBED_TOTAL_MAX = 6000
ACTION_ROWS_MAX = 5
BUTTONS_PER_ROW_MAX = 5
CUSTOM_ID_MAX = 100
BUTTON_LABEL_MAX = 80
SELECT_OPTIONS_MAX = 25
MODAL_TITLE_MAX = 45
MODAL_COMPONENTS_MAX = 5
TEXT_INPUT_VALUE_MAX = 4000
COMMAND_NAME_MAX = 32
COMMAND_DESCRIPTION_MAX = 100
COMMAND_OPTIONS_MAX = 25
COMMAND_CHOICES_MAX = 25
CHOICE_NAME_MAX = 100
CHOICE_STRING_VALUE_MAX = 100
STRING_OPTION_LENGTH_MAX = 6000
CHAT_INPUT_COMMANDS_MAX = 100
CONTEXT_MENU_COMMANDS_MAX = 15
DEFAULT_ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024
REQUEST_SIZE_MAX = 25 * 1024 * 1024
NONCE_MAX = 25

INVALID_FORM_BODY = 50035
EMPTY_MESSAGE = 50006
ALREADY_ACKNOWLEDGED = 40060
UNKNOWN_INTERACTION = 10062
INVALID_WEBHOOK_TOKEN = 50027
UNKNOWN_MESSAGE = 10008
UNKNOWN_WEBHOOK = 10015
UNKNOWN_CHANNEL = 10003
REQUEST_TOO_LARGE = 40005

# Discord's own pattern is ^[-_'\p{L}\p{N}\p{sc=Deva}\p{sc=Thai}]{1,32}$; \w is the closest
# the standard library gets (letters, digits and underscore in every script).
_COMMAND_NAME = re.compile(r"^[-_'\w]{1,32}$")
_SUBCOMMAND_TYPES = (1, 2)

Path = tuple[str | int, ...]


@dataclass
class FormError:
    """One rule broken at one field, as Discord reports it."""

    path: Path
    code: str
    message: str

    def __str__(self) -> str:
        where = ".".join(str(part) for part in self.path) or "<body>"
        return f"{where}: {self.message} ({self.code})"


@dataclass
class FormErrors:
    """Collects every broken rule of one request, then renders Discord's nested error body."""

    items: list[FormError] = field(default_factory=list)

    def add(self, path: Path, code: str, message: str) -> None:
        self.items.append(FormError(path, code, message))

    def __bool__(self) -> bool:
        return bool(self.items)

    def to_body(self) -> dict[str, Any]:
        errors: dict[str, Any] = {}
        for item in self.items:
            node = errors
            for part in item.path:
                node = node.setdefault(str(part), {})
            node.setdefault("_errors", []).append({"code": item.code, "message": item.message})
        return {"code": INVALID_FORM_BODY, "message": "Invalid Form Body", "errors": errors}


def _check_length(
    errors: FormErrors, path: Path, value: Any, *, maximum: int, minimum: int = 0
) -> None:
    if value is None:
        if minimum > 0:
            errors.add(path, "BASE_TYPE_REQUIRED", "This field is required")
        return
    if not isinstance(value, str):
        errors.add(path, "BASE_TYPE_STRING", "Must be a string.")
        return
    if minimum > 0 and not (minimum <= len(value) <= maximum):
        errors.add(
            path, "BASE_TYPE_BAD_LENGTH", f"Must be between {minimum} and {maximum} in length."
        )
    elif len(value) > maximum:
        errors.add(path, "BASE_TYPE_MAX_LENGTH", f"Must be {maximum} or fewer in length.")


def _check_count(errors: FormErrors, path: Path, items: list[Any], maximum: int) -> None:
    if len(items) > maximum:
        errors.add(path, "BASE_TYPE_MAX_LENGTH", f"Must be {maximum} or fewer in length.")


# --------------------------------------------------------------------------- messages


def embed_length(embed: dict[str, Any]) -> int:
    """Characters Discord counts toward the 6000 total of a message's embeds."""
    total = len(embed.get("title") or "") + len(embed.get("description") or "")
    for embed_field in embed.get("fields") or []:
        total += len(embed_field.get("name") or "") + len(embed_field.get("value") or "")
    total += len((embed.get("footer") or {}).get("text") or "")
    total += len((embed.get("author") or {}).get("name") or "")
    return total


def check_embeds(errors: FormErrors, embeds: list[dict[str, Any]]) -> None:
    _check_count(errors, ("embeds",), embeds, EMBEDS_MAX)
    total = 0
    for index, embed in enumerate(embeds):
        base: Path = ("embeds", index)
        _check_length(errors, (*base, "title"), embed.get("title"), maximum=EMBED_TITLE_MAX)
        _check_length(
            errors, (*base, "description"), embed.get("description"), maximum=EMBED_DESCRIPTION_MAX
        )
        fields = embed.get("fields") or []
        _check_count(errors, (*base, "fields"), fields, EMBED_FIELDS_MAX)
        for field_index, embed_field in enumerate(fields):
            field_path = (*base, "fields", field_index)
            _check_length(
                errors, (*field_path, "name"), embed_field.get("name"),
                minimum=1, maximum=EMBED_FIELD_NAME_MAX,
            )
            _check_length(
                errors, (*field_path, "value"), embed_field.get("value"),
                minimum=1, maximum=EMBED_FIELD_VALUE_MAX,
            )
        if embed.get("footer"):
            _check_length(
                errors, (*base, "footer", "text"), embed["footer"].get("text"),
                minimum=1, maximum=EMBED_FOOTER_MAX,
            )
        if embed.get("author"):
            _check_length(
                errors, (*base, "author", "name"), embed["author"].get("name"),
                minimum=1, maximum=EMBED_AUTHOR_MAX,
            )
        total += embed_length(embed)
    if total > EMBED_TOTAL_MAX:
        errors.add(
            ("embeds",),
            "MAX_EMBED_SIZE_EXCEEDED",
            f"Embed size exceeds maximum size of {EMBED_TOTAL_MAX}",
        )


def _check_custom_id(errors: FormErrors, path: Path, custom_id: Any, seen: set[str]) -> None:
    _check_length(errors, path, custom_id, minimum=1, maximum=CUSTOM_ID_MAX)
    if isinstance(custom_id, str):
        if custom_id in seen:
            errors.add(path, "COMPONENT_CUSTOM_ID_DUPLICATED", "Component custom id cannot be duplicated")
        seen.add(custom_id)


def _check_button(errors: FormErrors, path: Path, button: dict[str, Any], seen: set[str]) -> None:
    style = button.get("style")
    if style == 5:
        if not button.get("url"):
            errors.add((*path, "url"), "BASE_TYPE_REQUIRED", "This field is required")
    elif style != 6:
        _check_custom_id(errors, (*path, "custom_id"), button.get("custom_id"), seen)
    _check_length(errors, (*path, "label"), button.get("label"), maximum=BUTTON_LABEL_MAX)


def _check_select(errors: FormErrors, path: Path, select: dict[str, Any], seen: set[str]) -> None:
    _check_custom_id(errors, (*path, "custom_id"), select.get("custom_id"), seen)
    _check_length(errors, (*path, "placeholder"), select.get("placeholder"), maximum=150)
    if select.get("type") == 3:
        options = select.get("options") or []
        if not options:
            errors.add((*path, "options"), "BASE_TYPE_REQUIRED", "This field is required")
        _check_count(errors, (*path, "options"), options, SELECT_OPTIONS_MAX)
        for index, option in enumerate(options):
            for key in ("label", "value"):
                _check_length(
                    errors, (*path, "options", index, key), option.get(key), minimum=1, maximum=100
                )


def check_components(errors: FormErrors, components: list[dict[str, Any]], flags: int = 0) -> None:
    """Action rows of buttons and selects (the classic layout discord.py's View produces)."""
    seen: set[str] = set()
    if flags & (1 << 15):
        # Components V2 layouts nest freely; only the identifiers are checked there.
        _walk_custom_ids(errors, ("components",), components, seen)
        return
    _check_count(errors, ("components",), components, ACTION_ROWS_MAX)
    for row_index, row in enumerate(components):
        path: Path = ("components", row_index)
        if row.get("type") != 1:
            errors.add((*path, "type"), "UNION_TYPE_CHOICES", "Top-level components must be action rows")
            continue
        children = row.get("components") or []
        if not children:
            errors.add((*path, "components"), "BASE_TYPE_REQUIRED", "This field is required")
        selects = [child for child in children if child.get("type") in (3, 5, 6, 7, 8)]
        if selects and len(children) > 1:
            errors.add(
                (*path, "components"),
                "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                "The specified component exceeds the maximum width",
            )
        _check_count(errors, (*path, "components"), children, BUTTONS_PER_ROW_MAX)
        for child_index, child in enumerate(children):
            child_path = (*path, "components", child_index)
            if child.get("type") == 2:
                _check_button(errors, child_path, child, seen)
            elif child.get("type") in (3, 5, 6, 7, 8):
                _check_select(errors, child_path, child, seen)


def _walk_custom_ids(
    errors: FormErrors, path: Path, components: list[dict[str, Any]], seen: set[str]
) -> None:
    for index, component in enumerate(components):
        here = (*path, index)
        if "custom_id" in component:
            _check_custom_id(errors, (*here, "custom_id"), component["custom_id"], seen)
        for key in ("components", "accessory", "component"):
            nested = component.get(key)
            if isinstance(nested, dict):
                _walk_custom_ids(errors, (*here, key), [nested], seen)
            elif isinstance(nested, list):
                _walk_custom_ids(errors, (*here, key), nested, seen)


def check_message(
    errors: FormErrors, payload: dict[str, Any], *, creating: bool, file_count: int = 0
) -> None:
    """Content, embeds and components of a message being created or edited."""
    content = payload.get("content")
    _check_length(errors, ("content",), content, maximum=MESSAGE_CONTENT_MAX)
    embeds = payload.get("embeds") or []
    check_embeds(errors, embeds)
    components = payload.get("components") or []
    check_components(errors, components, int(payload.get("flags") or 0))
    nonce = payload.get("nonce")
    if isinstance(nonce, str) and len(nonce) > NONCE_MAX:
        errors.add(("nonce",), "BASE_TYPE_MAX_LENGTH", f"Must be {NONCE_MAX} or fewer in length.")
    if creating and not (content or embeds or components or file_count or payload.get("sticker_ids")
                         or payload.get("poll")):
        errors.add((), "EMPTY_MESSAGE", "Cannot send an empty message")


# --------------------------------------------------------------------------- interactions


def check_choices(errors: FormErrors, choices: list[dict[str, Any]], path: Path = ("data", "choices")) -> None:
    """Autocomplete answers and command choices share these rules."""
    _check_count(errors, path, choices, COMMAND_CHOICES_MAX)
    for index, choice in enumerate(choices):
        _check_length(errors, (*path, index, "name"), choice.get("name"), minimum=1, maximum=CHOICE_NAME_MAX)
        value = choice.get("value")
        if isinstance(value, str):
            _check_length(errors, (*path, index, "value"), value, minimum=1, maximum=CHOICE_STRING_VALUE_MAX)
        elif not isinstance(value, int | float) or isinstance(value, bool):
            errors.add((*path, index, "value"), "BASE_TYPE_REQUIRED", "This field is required")


def _modal_text_inputs(components: list[dict[str, Any]]) -> list[tuple[Path, dict[str, Any]]]:
    found: list[tuple[Path, dict[str, Any]]] = []
    for index, component in enumerate(components):
        if component.get("type") == 1:
            for child_index, child in enumerate(component.get("components") or []):
                found.append((("data", "components", index, "components", child_index), child))
        elif component.get("type") == 18 and isinstance(component.get("component"), dict):
            found.append((("data", "components", index, "component"), component["component"]))
    return found


def check_modal(errors: FormErrors, data: dict[str, Any]) -> None:
    _check_length(errors, ("data", "title"), data.get("title"), minimum=1, maximum=MODAL_TITLE_MAX)
    _check_length(errors, ("data", "custom_id"), data.get("custom_id"), minimum=1, maximum=CUSTOM_ID_MAX)
    components = data.get("components") or []
    if not 1 <= len(components) <= MODAL_COMPONENTS_MAX:
        errors.add(
            ("data", "components"),
            "BASE_TYPE_BAD_LENGTH",
            f"Must be between 1 and {MODAL_COMPONENTS_MAX} in length.",
        )
    seen: set[str] = set()
    for path, text_input in _modal_text_inputs(components):
        _check_custom_id(errors, (*path, "custom_id"), text_input.get("custom_id"), seen)
        if text_input.get("type") == 4:
            _check_length(errors, (*path, "label"), text_input.get("label"), maximum=MODAL_TITLE_MAX)
            _check_length(errors, (*path, "placeholder"), text_input.get("placeholder"), maximum=100)
            _check_length(errors, (*path, "value"), text_input.get("value"), maximum=TEXT_INPUT_VALUE_MAX)
            # The prefilled value must also fit the input's own max_length (Discord refuses it).
            max_length = text_input.get("max_length")
            if max_length is not None:
                if not isinstance(max_length, int) or not 1 <= max_length <= TEXT_INPUT_VALUE_MAX:
                    errors.add((*path, "max_length"), "NUMBER_TYPE_MAX",
                               f"int value should be between 1 and {TEXT_INPUT_VALUE_MAX}.")
                else:
                    _check_length(errors, (*path, "value"), text_input.get("value"), maximum=max_length)


def modal_text_inputs(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The inputs of a modal in display order, whether wrapped in rows (type 1) or labels (18)."""
    return [component for _, component in _modal_text_inputs(data.get("components") or [])]


# --------------------------------------------------------------------------- commands


def _check_name(errors: FormErrors, path: Path, name: Any, *, lowercase: bool) -> None:
    if not isinstance(name, str) or not _COMMAND_NAME.match(name):
        errors.add(
            path,
            "APPLICATION_COMMAND_INVALID_NAME",
            "Command name is invalid (1-32 characters: letters, digits, - _ ')",
        )
    elif lowercase and name != name.lower():
        errors.add(path, "APPLICATION_COMMAND_INVALID_NAME", "Command name must be lowercase")


def _check_options(errors: FormErrors, path: Path, options: list[dict[str, Any]], depth: int) -> None:
    _check_count(errors, path, options, COMMAND_OPTIONS_MAX)
    names: set[str] = set()
    seen_optional = False
    kinds = {option.get("type") in _SUBCOMMAND_TYPES for option in options}
    if len(kinds) > 1:
        errors.add(
            path,
            "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID",
            "Sub-command and sub-command group option types are mutually exclusive to all other types",
        )
    for index, option in enumerate(options):
        here = (*path, index)
        option_type = option.get("type")
        _check_name(errors, (*here, "name"), option.get("name"), lowercase=True)
        _check_length(
            errors, (*here, "description"), option.get("description"),
            minimum=1, maximum=COMMAND_DESCRIPTION_MAX,
        )
        name = option.get("name")
        if isinstance(name, str):
            if name in names:
                errors.add((*here, "name"), "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS",
                           "Option names must be unique")
            names.add(name)
        if option_type in _SUBCOMMAND_TYPES:
            if option_type == 2 and depth > 0 or option_type == 1 and depth > 1:
                errors.add((*here, "type"), "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID",
                           "Sub-commands nest at most two levels deep")
            children = option.get("options") or []
            if option_type == 2 and any(child.get("type") != 1 for child in children):
                errors.add((*here, "options"), "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID",
                           "A sub-command group may only contain sub-commands")
            _check_options(errors, (*here, "options"), children, depth + 1)
            continue
        if option.get("required"):
            if seen_optional:
                errors.add((*here, "required"), "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                           "Required options must be placed before non-required options")
        else:
            seen_optional = True
        choices = option.get("choices") or []
        if choices:
            check_choices(errors, choices, (*here, "choices"))
            if option.get("autocomplete"):
                errors.add((*here, "autocomplete"), "APPLICATION_COMMAND_OPTION_CHOICES_AUTOCOMPLETE",
                           "Autocomplete cannot be enabled on options that have choices")
        for key, minimum in (("min_length", 0), ("max_length", 1)):
            value = option.get(key)
            if value is not None and not (minimum <= value <= STRING_OPTION_LENGTH_MAX):
                errors.add((*here, key), "NUMBER_TYPE_MAX",
                           f"{key} must be between {minimum} and {STRING_OPTION_LENGTH_MAX}")


def check_commands(errors: FormErrors, commands: list[dict[str, Any]]) -> None:
    """A bulk overwrite: every command's shape plus the per-scope counts and unique names."""
    counts = {1: 0, 2: 0, 3: 0}
    seen: set[tuple[int, str]] = set()
    for index, command in enumerate(commands):
        command_type = int(command.get("type", 1))
        counts[command_type] = counts.get(command_type, 0) + 1
        name = command.get("name")
        if command_type == 1:
            _check_name(errors, (index, "name"), name, lowercase=True)
        else:
            # Context menu names are free text (spaces and capitals allowed), 1-32 characters.
            _check_length(errors, (index, "name"), name, minimum=1, maximum=COMMAND_NAME_MAX)
        if command_type == 1:
            _check_length(
                errors, (index, "description"), command.get("description"),
                minimum=1, maximum=COMMAND_DESCRIPTION_MAX,
            )
        elif command.get("description"):
            errors.add((index, "description"), "APPLICATION_COMMAND_CONTEXT_MENU_DESCRIPTION",
                       "Context menu commands cannot have a description")
        if isinstance(name, str):
            if (command_type, name) in seen:
                errors.add((index, "name"), "APPLICATION_COMMANDS_DUPLICATE_NAME",
                           f"Application command names must be unique: {name}")
            seen.add((command_type, name))
        permissions = command.get("default_member_permissions")
        # Documented as a string; Discord coerces integers too (discord.py sends an int).
        valid = (isinstance(permissions, str) and permissions.isdigit()) or (
            isinstance(permissions, int) and not isinstance(permissions, bool) and permissions >= 0
        )
        if permissions is not None and not valid:
            errors.add((index, "default_member_permissions"), "BASE_TYPE_STRING",
                       "Must be a string of the permission bits, or null.")
        _check_options(errors, (index, "options"), command.get("options") or [], 0)
    if counts[1] > CHAT_INPUT_COMMANDS_MAX:
        errors.add((), "APPLICATION_COMMANDS_MAX", f"Maximum number of chat input commands reached ({CHAT_INPUT_COMMANDS_MAX})")
    for command_type in (2, 3):
        if counts[command_type] > CONTEXT_MENU_COMMANDS_MAX:
            errors.add((), "APPLICATION_COMMANDS_MAX",
                       f"Maximum number of context menu commands reached ({CONTEXT_MENU_COMMANDS_MAX})")
