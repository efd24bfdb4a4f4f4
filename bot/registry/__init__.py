"""Each server's registry of models and LoRAs, in SQLite (aiosqlite), torch-free.

Public API (everything the bot needs is re-exported here)::

    registry = await Registry.open(path)          # WAL, foreign keys, migrations applied
    await registry.close()

    # models (per guild): registry.models, a ModelStore
    await registry.models.add(guild_id, ModelEntry(...), actor_id) -> ModelEntry
    await registry.models.get(guild_id, name) -> ModelEntry | None
    await registry.models.all(guild_id) -> list[ModelEntry]
    await registry.models.update(guild_id, name, actor_id, **changes) -> ModelEntry
    await registry.models.remove(guild_id, name, actor_id)
    await registry.models.autocomplete(guild_id, text, *, channel_id=None, nsfw_ok=None) -> list[Choice]

    # LoRAs (per guild): registry.loras, a LoraStore, with use counts and bookmarks
    entry = LoraEntry.from_file_info(info, name=..., category=...)   # engine's /inspect result
    await registry.loras.add(guild_id, entry, actor_id) -> LoraEntry
    await registry.loras.add_many(guild_id, entries, actor_id) -> int     # one transaction
    await registry.loras.get(guild_id, name) -> LoraEntry | None
    await registry.loras.get_by_id(guild_id, lora_id) -> LoraEntry | None
    await registry.loras.update(guild_id, name, actor_id, **changes) -> LoraEntry
    await registry.loras.set_enabled(guild_id, name, actor_id, enabled) -> LoraEntry
    await registry.loras.remove(guild_id, name, actor_id)
    await registry.loras.files(guild_id) -> set[str]
    await registry.loras.count(guild_id) -> int
    await registry.loras.search(guild_id, query="", *, architecture=None, category=None,
                                nsfw=None, enabled=None, bookmarked_by=None,
                                sort="newest"|"most_used"|"name", limit=25, offset=0)
    await registry.loras.autocomplete(guild_id, text, *, architecture=None, nsfw_ok=None)
    await registry.loras.record_use(guild_id, lora_names)
    await registry.loras.bookmark(guild_id, user_id, lora_name) -> bool   # False: already there
    await registry.loras.unbookmark(guild_id, user_id, lora_name) -> bool
    await registry.loras.bookmarked_by(guild_id, user_id) -> list[LoraEntry]

    # embeddings: registry.embeddings (add, get, all, remove, autocomplete, as models)

    # saved recipes, settings, audit, posted images
    await registry.saved_recipes.save(guild_id, user_id, name, recipe_dict) -> SavedRecipe
    await registry.saved_recipes.of_member(guild_id, user_id) -> list[SavedRecipe]
    await registry.saved_recipes.get(guild_id, user_id, name) -> SavedRecipe | None
    await registry.saved_recipes.delete(guild_id, user_id, name) -> bool
    await registry.saved_recipes.using(guild_id, model=entry | lora=entry) -> list[RecipeUse]
    await registry.settings.get(guild_id) -> ServerSettings
    await registry.settings.update(guild_id, actor_id, **changes) -> ServerSettings
    await registry.audit.entries(guild_id, limit=50, *, actor_id=None, target=None) -> list[AuditEntry]
    await registry.posts.record(guild_id, channel_id, message_id, user_id, recipe_dict) -> PostRecord
    await registry.posts.get(guild_id, message_id) -> PostRecord | None
    await registry.posts.recent(guild_id, user_id, channel_id, limit=1) -> list[PostRecord]
    await registry.posts.delete(guild_id, message_id) -> bool
    registry.book        # RecipeBook: the server recipe book, cards, lineage
    registry.privacy     # PrivacyStore: member_data, delete_member_data, record/cancel_departure
    registry.sync_state  # SyncState: the command tree's hash as last synced
    await registry.purge_departed(grace_s) -> list[int]      # servers whose data was deleted

    # validation (see bot.request.parse and bot.request.validation)
    catalog = await registry.catalogs.get(guild_id) -> Catalog     # cached, rebuilt after writes

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
