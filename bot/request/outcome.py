"""What checking a request produces: problems (it cannot run), notes (it runs; the member
should know), and the validated recipe. Shared by the resource checks and the parameter rules."""

from __future__ import annotations

from dataclasses import dataclass

from bot.registry.models import LoraEntry, ModelEntry
from engine.protocol import Recipe


@dataclass(frozen=True)
class Problem:
    """Why a request cannot run. ``code`` is stable (tests, the bot's formatting)."""

    code: str
    message: str
    fix: str
    suggestions: tuple[str, ...] = ()

    def as_text(self) -> str:
        text = f"{self.message} {self.fix}"
        if self.suggestions:
            text += " Did you mean: " + ", ".join(f"`{s}`" for s in self.suggestions) + "?"
        return text


@dataclass(frozen=True)
class Note:
    """Something the member should know about a request that will run (a warning)."""

    code: str
    message: str


@dataclass(frozen=True)
class Validated:
    """A request that may run: the engine recipe plus what the member should be told."""

    recipe: Recipe
    model: ModelEntry
    #: The registry entries of the stack, in recipe order (for record_use and the embed).
    loras: tuple[LoraEntry, ...]
    notes: tuple[Note, ...] = ()
    #: Trigger words appended to the prompt because the server adds them automatically.
    added_trigger_words: tuple[str, ...] = ()
    #: True when the seed was drawn here rather than given by the member.
    seed_was_random: bool = False
    #: The sampling profile (:mod:`engine.profiles` id) merged into the recipe, if any.
    profile: str | None = None


@dataclass(frozen=True)
class Rejected:
    problems: tuple[Problem, ...]

    def as_text(self, limit: int = 2000) -> str:
        """All problems as a bulleted message, cut to ``limit`` characters (Discord: 2000)."""
        head = (
            "This request can't run yet:" if len(self.problems) > 1 else "This request can't run:"
        )
        lines = [head, *(f"• {p.as_text()}" for p in self.problems)]
        text = "\n".join(lines)
        return text if len(text) <= limit else text[: limit - 1] + "…"


class Check:
    """Collects problems and notes while one request is checked."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.notes: list[Note] = []

    def problem(
        self, code: str, message: str, fix: str, suggestions: list[str] | tuple[str, ...] = ()
    ) -> None:
        self.problems.append(Problem(code, message, fix, tuple(suggestions)))

    def note(self, code: str, message: str) -> None:
        self.notes.append(Note(code, message))



def fmt(value: float) -> str:
    return f"{value:g}"
