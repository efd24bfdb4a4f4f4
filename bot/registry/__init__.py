"""Each server's registry of models and LoRAs, in SQLite (aiosqlite), torch-free.

Public API (everything the bot needs is re-exported here)::

    registry = await Registry.open(path)          # WAL, foreign keys, migrations applied
    await registry.close()

    # models (per guild)
    await registry.add_model(guild_id, ModelEntry(...), actor_id) -> ModelEntry
    await registry.get_model(guild_id, name) -> ModelEntry | None
    await registry.list_models(guild_id) -> list[ModelEntry]
    await registry.update_model(guild_id, name, actor_id, **changes) -> ModelEntry
    await registry.remove_model(guild_id, name, actor_id)
    await registry.autocomplete_models(guild_id, text, *, channel_id=None, nsfw_ok=None) -> list[Choice]

    # LoRAs (per guild)
    entry = LoraEntry.from_file_info(info, name=..., category=...)   # engine's /inspect result
    await registry.add_lora(guild_id, entry, actor_id) -> LoraEntry
    await registry.add_loras(guild_id, entries, actor_id) -> int     # one transaction
    await registry.get_lora(guild_id, name) -> LoraEntry | None
    await registry.update_lora(guild_id, name, actor_id, **changes) -> LoraEntry
    await registry.set_enabled(guild_id, name, actor_id, enabled) -> LoraEntry
    await registry.remove_lora(guild_id, name, actor_id)
    await registry.registered_lora_files(guild_id) -> set[str]
    await registry.count_loras(guild_id) -> int
    await registry.search_loras(guild_id, query="", *, architecture=None, category=None,
                                nsfw=None, enabled=None, bookmarked_by=None,
                                sort="newest"|"most_used"|"name", limit=25, offset=0)
    await registry.autocomplete_loras(guild_id, text, *, architecture=None, nsfw_ok=None)
    await registry.record_use(guild_id, lora_names)

    # bookmarks, saved recipes, settings, audit, posted images
    await registry.bookmark(guild_id, user_id, lora_name) -> bool   # False: already there
    await registry.unbookmark(guild_id, user_id, lora_name) -> bool
    await registry.bookmarks(guild_id, user_id) -> list[LoraEntry]
    await registry.save_recipe(guild_id, user_id, name, recipe_dict) -> SavedRecipe
    await registry.saved_recipes(guild_id, user_id) -> list[SavedRecipe]
    await registry.get_recipe(guild_id, user_id, name) -> SavedRecipe | None
    await registry.delete_recipe(guild_id, user_id, name) -> bool
    await registry.get_settings(guild_id) -> ServerSettings
    await registry.update_settings(guild_id, actor_id, **changes) -> ServerSettings
    await registry.audit_log(guild_id, limit=50, *, actor_id=None, target=None) -> list[AuditEntry]
    await registry.recipes_using(guild_id, model=entry | lora=entry) -> list[RecipeUse]
    await registry.purge_departed(grace_s) -> list[int]      # servers whose data was deleted
    registry.privacy   # PrivacyStore: member_data, delete_member_data, record/cancel_departure
    registry.sync_state  # SyncState: the command tree's hash as last synced
    await registry.record_post(guild_id, channel_id, message_id, user_id, recipe_dict) -> PostRecord
    await registry.get_post(guild_id, message_id) -> PostRecord | None
    await registry.delete_post(guild_id, message_id) -> bool

    # validation (see bot.parse and bot.validation)
    catalog = await registry.catalog(guild_id) -> Catalog     # cached, rebuilt after writes

Refusals raise :class:`RegistryError` (subclasses :class:`NotFound`, :class:`AlreadyExists`)
whose text is written to be shown to the admin unchanged.
"""

from bot.registry.catalog import Catalog
from bot.registry.models import (
    ARCHITECTURES,
    AlreadyExists,
    AuditEntry,
    Category,
    Choice,
    ImageCheck,
    LoraEntry,
    ModelEntry,
    NotFound,
    NsfwPolicy,
    PostRecord,
    RecipeUse,
    RegistryError,
    SavedRecipe,
    SearchSort,
    ServerSettings,
)
from bot.registry.registry import Registry
from bot.registry.text import Air, clean_name, name_key, parse_air

__all__ = [
    "ARCHITECTURES",
    "Air",
    "AlreadyExists",
    "AuditEntry",
    "Catalog",
    "Category",
    "Choice",
    "ImageCheck",
    "LoraEntry",
    "ModelEntry",
    "NotFound",
    "NsfwPolicy",
    "PostRecord",
    "RecipeUse",
    "Registry",
    "RegistryError",
    "SavedRecipe",
    "SearchSort",
    "ServerSettings",
    "clean_name",
    "name_key",
    "parse_air",
]
