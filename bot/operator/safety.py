"""Content safety: a look at every image before it is posted, and a per-server prompt blocklist.

Flags on models and LoRAs say what their makers intended, not what a prompt gets out of
them: an SFW-flagged model in an SFW channel can still paint something explicit, and posting
it there is a Terms of Service risk for the server. So every result is shown to an image
classifier first (:meth:`ImageSafety.screen`, the one entry point the poster calls), and the
server's policy decides what happens to a flagged image where NSFW is not allowed:

- ``withhold`` (the default): the image is not posted; the result message says why, so the
  requester can run the recipe again in an age-restricted channel.
- ``spoiler``: posted behind Discord's spoiler cover, with the same note.
- ``off``: posted as is (the server takes responsibility).

In an age-restricted channel of a server whose NSFW policy allows NSFW there, images are
posted as they are. The classifier is NudeNet (``pip install 'atelier[safety]'``): a small
ONNX detector that ships its weights in the wheel and runs on the CPU in a worker thread,
a few tens of milliseconds per image. Without it the bot still runs and says so at start
and in ``/settings``; a classifier that fails on an image counts as flagged, so a broken
check never lets an image into a channel it was meant to keep clean.

The blocklist is plain text matching, kept here because it serves the same goal: words or
phrases (``*`` at the end of a word matches any ending) refused in prompts, compared
case-insensitively on word boundaries after Unicode normalisation, so ``Ｎｕｄｅ`` or a
zero-width space inside a word does not slip past it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.registry.models import ImageCheck, NsfwPolicy
from bot.registry.text import normalise_for_matching as normalise

log = logging.getLogger(__name__)

#: NudeNet's labels for explicit nudity (it also detects covered parts and faces).
EXPLICIT_LABELS = frozenset(
    {
        "FEMALE_BREAST_EXPOSED",
        "FEMALE_GENITALIA_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
        "BUTTOCKS_EXPOSED",
        "ANUS_EXPOSED",
    }
)
#: A detection at least this confident flags the image. NudeNet reports boxes from 0.2 up;
#: below about 0.4 they are mostly skin-coloured noise.
DEFAULT_THRESHOLD = 0.45


@dataclass(frozen=True)
class Verdict:
    flagged: bool
    #: What the classifier saw, e.g. ("FEMALE_BREAST_EXPOSED",), for the log and the note.
    labels: tuple[str, ...] = ()
    score: float = 0.0


class Classifier(Protocol):
    """Looks at one encoded image. Synchronous: :class:`ImageSafety` runs it in a thread."""

    name: str

    def classify(self, image: bytes) -> Verdict: ...


class NudeNetClassifier:
    """NudeNet's detector (ONNX, CPU), loaded on first use: a flag means explicit nudity."""

    name = "NudeNet"

    def __init__(self, threshold: float = DEFAULT_THRESHOLD) -> None:
        from nudenet import NudeDetector  # noqa: F401 - fail now, at start, when not installed

        self.threshold = threshold
        self._detector: object | None = None

    def _get(self) -> object:
        if self._detector is None:
            from nudenet import NudeDetector

            self._detector = NudeDetector()
        return self._detector

    def classify(self, image: bytes) -> Verdict:
        detections = self._get().detect(image)  # type: ignore[attr-defined]
        hits = [d for d in detections if d["class"] in EXPLICIT_LABELS and d["score"] >= self.threshold]
        return Verdict(
            bool(hits),
            tuple(sorted({d["class"] for d in hits})),
            max((float(d["score"]) for d in hits), default=0.0),
        )


def load_classifier(choice: str) -> Classifier | None:
    """``"nudenet"`` (must be installed), ``"auto"`` (NudeNet if installed) or ``"off"``."""
    if choice == "off":
        return None
    try:
        return NudeNetClassifier()
    except ImportError:
        if choice == "nudenet":
            raise RuntimeError(
                "image_classifier is 'nudenet' but NudeNet is not installed; "
                "run `pip install 'atelier[safety]'` (or set ATELIER_IMAGE_CLASSIFIER=off)"
            ) from None
        log.warning(
            "no image classifier installed: results are posted unchecked. "
            "`pip install 'atelier[safety]'` adds NudeNet, which keeps SFW channels SFW."
        )
        return None


@dataclass
class Screened:
    """What to post: (index in the result, image, behind a spoiler?) and notes for the post."""

    files: list[tuple[int, bytes, bool]]
    notes: list[str] = field(default_factory=list)
    withheld: int = 0


def _as_posted(images: Sequence[bytes]) -> Screened:
    return Screened([(i, image, False) for i, image in enumerate(images)])


class ImageSafety:
    """The check every result goes through before it is posted."""

    def __init__(self, classifier: Classifier | None) -> None:
        self.classifier = classifier

    @property
    def available(self) -> bool:
        return self.classifier is not None

    async def screen(
        self, images: Sequence[bytes], *, action: ImageCheck | str, nsfw_allowed_here: bool
    ) -> Screened:
        """Apply the server's ``action`` to flagged images in a channel where NSFW is not allowed."""
        action = ImageCheck(action)
        keep = list(images)
        if nsfw_allowed_here or action is ImageCheck.OFF or self.classifier is None or not keep:
            return _as_posted(keep)
        verdicts = await asyncio.gather(*(asyncio.to_thread(self._verdict, image) for image in keep))
        flagged = [v for v in verdicts if v.flagged]
        if not flagged:
            return _as_posted(keep)
        failed = any(v.labels == ("check failed",) for v in flagged)
        reason = (
            "the image check failed on it" if failed and len(flagged) == 1
            else "the image check found likely explicit content"
        )
        where = "this is not an age-restricted channel"
        count = f"{len(flagged)} of {len(keep)} images" if len(keep) > 1 else "The image"
        if action is ImageCheck.SPOILER:
            note = f"{count} hidden behind a spoiler: {reason}, and {where}."
            files = [(i, image, v.flagged) for i, (image, v) in enumerate(zip(keep, verdicts, strict=True))]
            return Screened(files, [note])
        posted = [(i, image, False) for i, (image, v) in enumerate(zip(keep, verdicts, strict=True)) if not v.flagged]
        note = (
            f"{count} {'was' if len(flagged) == 1 else 'were'} not posted: {reason}, and {where}. "
            "Run the recipe in an age-restricted channel, or change the prompt."
        )
        return Screened(posted, [note], withheld=len(flagged))

    def _verdict(self, image: bytes) -> Verdict:
        assert self.classifier is not None
        try:
            verdict = self.classifier.classify(image)
        except Exception:
            log.exception("the image classifier failed; treating the image as flagged")
            return Verdict(True, ("check failed",))
        if verdict.flagged:
            log.info("image flagged by %s: %s (%.2f)", self.classifier.name, ", ".join(verdict.labels), verdict.score)
        return verdict


async def screen_for_channel(client: Any, guild_id: int, channel_id: int, images: Sequence[bytes]) -> Screened:
    """The poster's one call: the server's policy for this channel applied to ``images``.

    The channel comes from discord.py's cache (the Guilds intent keeps it); one the bot does
    not know counts as not age-restricted, the safe side.
    """
    safety: ImageSafety | None = getattr(client, "safety", None)
    if safety is None or not safety.available:
        return _as_posted(images)
    settings = await client.registry.settings.get(guild_id)
    channel = client.get_channel(channel_id)
    is_nsfw = getattr(channel, "is_nsfw", None)
    channel_nsfw = bool(is_nsfw()) if callable(is_nsfw) else False
    allowed = channel_nsfw and settings.nsfw_policy is not NsfwPolicy.NEVER
    return await safety.screen(images, action=settings.image_check, nsfw_allowed_here=allowed)


# --- the prompt blocklist --------------------------------------------------------------------


def _pattern(term: str) -> str:
    words = [re.escape(w) for w in term.split()]
    if term.endswith("*"):
        words[-1] = re.escape(term.split()[-1].rstrip("*")) + r"\w*"
    return r"(?<!\w)" + r"\W+".join(words) + r"(?!\w)"


def blocked_terms_in(text: str, terms: Sequence[str]) -> list[str]:
    """The server's blocked terms that occur in ``text`` (as whole words), in list order."""
    if not terms or not text:
        return []
    haystack = normalise(text)
    return [term for term in terms if re.search(_pattern(term), haystack)]
