"""The shared secret between the bot and an engine it starts itself.

An operator who runs the engine elsewhere configures the same ``ATELIER_ENGINE_TOKEN`` on
both sides. A bot that spawns its own engine needs no setting: on first start it generates a
token, keeps it in ``<data_dir>/engine-token`` readable by the bot's user only, and hands it
to the engine through the child's environment (never its command line, which ``ps`` shows to
every user of the machine). The file is reused on later starts, so an engine started by hand
from the same data folder can be given the same token with ``--token-file``.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from engine.auth import check_token, new_token

log = logging.getLogger(__name__)


def load_or_create(path: Path) -> str:
    """The token kept at ``path``, created (mode 600) when there is none yet."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return _create(path)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        # Someone widened it (a copy, a backup restore): narrow it rather than refuse to start.
        os.chmod(path, 0o600)
        log.warning("%s was readable by other users; its mode is now 600", path)
    return check_token(path.read_text(encoding="utf-8"), source=str(path))


def _create(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    token = new_token()
    # O_EXCL: two bots starting at once never overwrite each other's token.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_or_create(path)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    log.info("generated the engine token in %s", path)
    return token
