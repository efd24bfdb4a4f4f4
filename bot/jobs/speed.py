"""How long a job takes, learnt from the jobs that ran: for ETAs and for fair turns.

Estimates are kept per (model, size, steps, images) as an exponential moving average of the
engine's own reported seconds, with a per-model rate (seconds per megapixel-step-image) for
shapes not seen yet, and a global rate before anything ran. Moving averages, not means: a
model that moved to a faster GPU should be believed within a few jobs.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.pictures import edits, picture_count
from engine.protocol import Recipe
from engine.recipe.picture import step_work

#: Weight of the newest measurement.
ALPHA = 0.3
#: Before anything was measured: a guess of a mid-range GPU at SD 1.5 sizes.
DEFAULT_RATE_S = 0.05  # seconds per megapixel-step-image
MIN_ESTIMATE_S = 0.05
#: Shapes (and models) whose averages are kept, least recently measured dropped first:
#: members choose sizes, steps and counts freely, so the shapes seen grow without end.
#: A dropped shape falls back to its model's rate, a dropped model to the global rate.
KEPT = 2048


def work_steps(recipe: Recipe) -> float:
    """Denoising work in steps at the recipe's size (what ETAs and fair turns scale by).

    step_work: image-to-image at strength s runs ~s*steps steps; an upscale pass adds its own.
    An edit (FLUX.1 Kontext, Qwen-Image-Edit) is not image-to-image: strength does not apply,
    all its steps run, and each runs the transformer over the result's tokens plus every
    picture's reference tokens beside them (Kontext: one picture at the result's size, about
    twice the sequence; Qwen-Image-Edit-2509: the input and up to two references). Attention grows faster than the sequence, so ``steps x (1 + pictures)`` is a
    floor, close enough for the tiny-to-mid sizes members ask for; the measured rate per
    shape corrects it after the first edits ran.
    """
    if edits(recipe):
        return float(recipe.steps) * (1 + picture_count(recipe))
    return step_work(recipe)


def _work(recipe: Recipe) -> float:
    return max(1e-6, recipe.width * recipe.height / 1e6 * work_steps(recipe) * max(1, recipe.count))


def _shape(recipe: Recipe) -> tuple[str, int, int, float, int]:
    return (recipe.model, recipe.width, recipe.height, work_steps(recipe), recipe.count)


@dataclass
class SpeedBook:
    default_rate: float = DEFAULT_RATE_S

    def __post_init__(self) -> None:
        self._by_shape: dict[tuple[str, int, int, float, int], float] = {}
        self._rate_by_model: dict[str, float] = {}
        self._rate: float | None = None

    def record(self, recipe: Recipe, seconds: float) -> None:
        if seconds <= 0:
            return
        shape = _shape(recipe)
        rate = seconds / _work(recipe)
        # Popped and put back last: each table stays ordered from least to most recently measured.
        self._by_shape[shape] = self._ema(self._by_shape.pop(shape, None), seconds)
        self._rate_by_model[recipe.model] = self._ema(self._rate_by_model.pop(recipe.model, None), rate)
        for table in (self._by_shape, self._rate_by_model):
            while len(table) > KEPT:
                del table[next(iter(table))]
        self._rate = self._ema(self._rate, rate)

    @staticmethod
    def _ema(old: float | None, new: float) -> float:
        return new if old is None else old + ALPHA * (new - old)

    def estimate(self, recipe: Recipe) -> float:
        """Seconds the engine will likely spend on ``recipe`` (model loading not included)."""
        known = self._by_shape.get(_shape(recipe))
        if known is not None:
            return max(MIN_ESTIMATE_S, known)
        rate = self._rate_by_model.get(recipe.model, self._rate or self.default_rate)
        return max(MIN_ESTIMATE_S, rate * _work(recipe))

    @property
    def measured(self) -> bool:
        return self._rate is not None
