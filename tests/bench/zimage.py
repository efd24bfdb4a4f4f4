"""``python -m tests.bench.zimage``: the shared DiT benchmark (:mod:`tests.bench.dit`) for Z-Image."""

from __future__ import annotations

from collections.abc import Sequence

from tests.bench.dit import main as dit_main


def main(argv: Sequence[str] | None = None) -> int:
    return dit_main(["--arch", "zimage", *(argv or [])])


if __name__ == "__main__":
    raise SystemExit(main())
