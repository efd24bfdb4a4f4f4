"""``python -m sandbox demo --out DIR`` | ``python -m sandbox build-models --out DIR``.

The offline demo (what ``make demo`` runs) and the tiny model builder the demo and tests use.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: python -m sandbox {demo,build-models,train-demo} [--help]

  demo --out DIR          play a scripted session against a local Discord double and tiny
                          models, offline (no token, no GPU); write what the channel shows
  build-models --out DIR  build the tiny (or --size full, random) models and demo LoRAs
  train-demo --out DIR    train the demo's small model and its LoRAs from procedural scenes
                          (minutes on a GPU: --device cuda; never run by make demo or tests)
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "demo":
        from sandbox import demo

        return int(demo.main(args[1:]) or 0)
    if args and args[0] == "build-models":
        from sandbox.model_builder import main as build_main

        return int(build_main(args[1:]) or 0)
    if args and args[0] == "train-demo":
        from sandbox.train_demo.train import main as train_main

        return int(train_main(args[1:]) or 0)
    stream = sys.stdout if args[:1] in (["-h"], ["--help"]) else sys.stderr
    print(USAGE, end="", file=stream)
    return 0 if stream is sys.stdout else 2


if __name__ == "__main__":
    sys.exit(main())
