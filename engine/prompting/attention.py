"""A1111's prompt attention syntax: ``(word)``, ``[word]``, ``(word:1.3)``, ``\\(`` and ``BREAK``.

The meaning is AUTOMATIC1111's ``modules/prompt_parser.parse_prompt_attention``, which recipes
from Civitai and A1111 assume: ``(x)`` multiplies attention by 1.1, ``[x]`` divides it by 1.1,
``(x:w)`` multiplies by ``w``, nesting multiplies, an unclosed bracket still applies to the
rest of the prompt, a backslash escapes a bracket, and ``BREAK`` (its own word) starts a new
75-token chunk. Written here because no maintained library reads this syntax with these
results (compel reads InvokeAI's ``word++``/``(word)1.1`` syntax and weights differently).
Torch-free: the bot counts tokens with it too.
"""

from __future__ import annotations

import re

#: A fragment with weight ``BREAK_WEIGHT`` and text "BREAK" is a chunk break, as in A1111.
BREAK_WEIGHT = -1.0
ROUND = 1.1
SQUARE = 1 / 1.1

# One token of the syntax per match: escapes, brackets, a ":weight)" closer, plain text, a colon.
_ATTENTION = re.compile(
    r"""
    \\\(|\\\)|\\\[|\\]|\\\\|\\|
    \(|\[|
    :([+-]?[.\d]+)\)|
    \)|]|
    [^\\()\[\]:]+|
    :
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_attention(text: str) -> list[tuple[str, float]]:
    """``"a (b:1.2) c"`` -> ``[("a ", 1.0), ("b", 1.2), (" c", 1.0)]``; runs of equal weight merged."""
    fragments: list[list[str | float]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for fragment in fragments[start:]:
            fragment[1] = float(fragment[1]) * factor

    for match in _ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            fragments.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(fragments))
        elif token == "[":
            square_open.append(len(fragments))
        elif weight is not None and round_open:
            scale_from(round_open.pop(), _number(weight))
        elif token == ")" and round_open:
            scale_from(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            scale_from(square_open.pop(), SQUARE)
        else:
            for index, part in enumerate(_BREAK.split(token)):
                if index:
                    fragments.append(["BREAK", BREAK_WEIGHT])
                fragments.append([part, 1.0])
    for start in round_open:
        scale_from(start, ROUND)
    for start in square_open:
        scale_from(start, SQUARE)
    if not fragments:
        fragments = [["", 1.0]]
    merged: list[list[str | float]] = [fragments[0]]
    for fragment in fragments[1:]:
        if fragment[1] == merged[-1][1]:
            merged[-1][0] = str(merged[-1][0]) + str(fragment[0])
        else:
            merged.append(fragment)
    return [(str(t), float(w)) for t, w in merged]


def _number(text: str) -> float:
    """``float`` of ``[+-]?[.\\d]+``; "1..2", which A1111 fails on, is read as 1.0."""
    try:
        return float(text)
    except ValueError:
        return 1.0


def is_break(fragment: tuple[str, float]) -> bool:
    return fragment[0] == "BREAK" and fragment[1] == BREAK_WEIGHT
