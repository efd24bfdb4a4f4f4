"""Registry benchmark: ``python -m tests.bench.registry`` prints one JSON object.

- ``validate_p99_ms``: the median of three rounds' p99 of :func:`bot.request.validation.validate`
  (``validate_rounds_p99_ms`` lists all three; ``validate_cpu_p99_ms`` is the same round's
  p99 of this thread's CPU time, which other processes cannot inflate) over a mix of requests (valid stacks,
  inline tags, typos that need "did you mean", architecture mismatches) with 10,000 LoRAs in
  the server. Baseline, same run and same requests: the same validator with suggestions by
  ``difflib.get_close_matches`` over every name and trigger word (the obvious implementation).
- ``autocomplete_p99_ms``: :meth:`LoraStore.autocomplete` with 100,000 LoRAs in the
  server, typing names letter by letter and words from the middle of names, half of the calls
  filtered to an architecture. Baseline, same run, same connection, same queries: a
  ``LIKE '%text%'`` scan over name and trigger words, ordered by name, ``LIMIT 25``.

Timings are wall-clock per call on this machine; the p99 is over every call of the kind.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bot.registry import Catalog, LoraEntry, ModelEntry, Registry
from bot.registry.search import lora_choice
from bot.registry.text import name_key
from bot.request.parse import build_request
from bot.request.validation import validate

SMALL_GUILD, LARGE_GUILD = 1, 2
SMALL, LARGE = 10_000, 100_000
ADMIN = 1
BASELINE_VALIDATE = 40
VALIDATE_ROUNDS = 3
BASELINE_AUTOCOMPLETE = 200

ADJECTIVES = (
    "neon cyber retro dark soft sharp vivid pastel gothic epic tiny giant ancient future "
    "dreamy gritty glossy matte noir sunny misty frozen golden silver crimson azure"
).split()
NOUNS = (
    "city style portrait armor dress forest castle robot girl knight dragon anime film "
    "grain detail light shadow sky ocean flower cat pixel ink watercolor sketch photo"
).split()
ARCHES = ("sd15", "sdxl", "sdxl", "flux")


def make_loras(count: int, seed: int) -> list[LoraEntry]:
    rng = random.Random(seed)
    out: list[LoraEntry] = []
    for i in range(count):
        adjective, noun = rng.choice(ADJECTIVES), rng.choice(NOUNS)
        name = f"{adjective} {noun} {rng.choice(NOUNS)} v{i}"
        out.append(
            LoraEntry(
                name=name,
                architecture=ARCHES[i % len(ARCHES)],  # type: ignore[arg-type]
                file=f"loras/{i}.safetensors",
                category="style",  # type: ignore[arg-type]
                trigger_words=(f"{adjective}{noun}{i}", f"{noun} {i}"),
                description=f"A {adjective} {noun} LoRA number {i}",
                uses=0,
            )
        )
    return out


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values) * 1000, 4),
        "p99_ms": round(p(values, 0.99) * 1000, 4),
        "calls": len(values),
    }


class DifflibCatalog(Catalog):
    """The baseline: suggestions by difflib over every name and trigger word, each call."""

    def suggest_loras(
        self, text: str, limit: int = 3, *, architecture: str | None = None
    ) -> list[str]:
        owner: dict[str, str] = {}
        for lora in self.loras.values():
            if architecture is not None and lora.architecture != architecture:
                continue
            owner.setdefault(name_key(lora.name), lora.name)
            for word in lora.trigger_words:
                owner.setdefault(name_key(word), lora.name)
        matches = difflib.get_close_matches(name_key(text), list(owner), n=limit * 3)
        return list(dict.fromkeys(owner[m] for m in matches))[:limit]


def make_requests(loras: list[LoraEntry], count: int, seed: int) -> list[Any]:
    rng = random.Random(seed)
    sd15 = [lo for lo in loras if lo.architecture == "sd15"]
    other = [lo for lo in loras if lo.architecture != "sd15"]
    requests = []
    for i in range(count):
        picks = rng.sample(sd15, 3)
        kind = i % 4
        slots: list[tuple[str | None, str | None]] = [(picks[0].name, "0.7"), (picks[1].name, None)]
        prompt = f"a photo of a castle <lora:{picks[2].name}:.5>"
        if kind == 1:  # a typo: needs suggestions
            typo = picks[0].name.replace(" ", "", 1)[:-1] + "x"
            slots[0] = (typo, "0.7")
        elif kind == 2:  # architecture mismatch (suggestions of the right architecture)
            slots[1] = (rng.choice(other).name, "1")
        elif kind == 3:  # bad weight and an unknown name made of a trigger word
            slots[1] = (picks[1].trigger_words[0][:-1], "0.7.1")
        requests.append(
            build_request(
                guild_id=SMALL_GUILD,
                channel_id=1,
                user_id=2,
                channel_is_nsfw=False,
                prompt=prompt,
                model="base",
                slots=slots,
                seed=42,
            )
        )
    return requests


def bench_validate(
    catalog: Catalog, requests: list[Any], cpu: list[float] | None = None
) -> list[float]:
    """Wall time per call; CPU time of this thread per call goes to ``cpu`` when given."""
    times = []
    for request in requests:
        start, start_cpu = time.perf_counter(), time.thread_time()
        validate(request, catalog, new_seed=lambda: 1)
        times.append(time.perf_counter() - start)
        if cpu is not None:
            cpu.append(time.thread_time() - start_cpu)
    return times


def autocomplete_queries(
    loras: list[LoraEntry], count: int, seed: int
) -> list[tuple[str, str | None]]:
    rng = random.Random(seed)
    queries: list[tuple[str, str | None]] = []
    while len(queries) < count:
        lora = rng.choice(loras)
        architecture = lora.architecture if rng.random() < 0.5 else None
        words = lora.name.split()
        typed = lora.name if rng.random() < 0.6 else " ".join(words[1:])  # mid-name words too
        for n in range(1, min(len(typed), 12) + 1):
            queries.append((typed[:n], architecture))
    return queries[:count]


async def timed(
    calls: list[Callable[[], Awaitable[object]]], cpu: list[float] | None = None
) -> list[float]:
    """Wall time per call; process CPU time (SQLite runs in aiosqlite's thread) to ``cpu``."""
    times = []
    for call in calls:
        start, start_cpu = time.perf_counter(), time.process_time()
        await call()
        times.append(time.perf_counter() - start)
        if cpu is not None:
            cpu.append(time.process_time() - start_cpu)
    return times


async def like_scan(
    registry: Registry, guild_id: int, text: str, architecture: str | None
) -> list[Any]:
    """The baseline autocomplete: substring LIKE over name and trigger words."""
    pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    arch_clause = "AND architecture = ? " if architecture else ""
    params: list[Any] = [guild_id, *([architecture] if architecture else []), pattern, pattern]
    # Same connection as the real path; only the fixed architecture clause is concatenated.
    sql = (
        "SELECT * FROM loras WHERE guild_id = ? AND enabled = 1 "  # noqa: S608
        + arch_clause
        + "AND (name LIKE ? ESCAPE '\\' OR trigger_words LIKE ? ESCAPE '\\') ORDER BY name_key LIMIT 25"
    )
    rows = await registry._db.fetch_all(sql, params)
    return [
        lora_choice(LoraEntry(name=r["name"], architecture=r["architecture"], file=r["file"]))
        for r in rows
    ]


async def main() -> dict[str, Any]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        registry = await Registry.open(Path(folder) / "bench.db")
        try:
            small = make_loras(SMALL, seed=1)
            large = make_loras(LARGE, seed=2)
            t0 = time.perf_counter()
            await registry.models.add(
                SMALL_GUILD,
                ModelEntry(name="base", architecture="sd15", file="base.safetensors"),
                ADMIN,
            )
            await registry.loras.add_many(SMALL_GUILD, small, ADMIN)
            for i in range(0, LARGE, 20_000):
                await registry.loras.add_many(LARGE_GUILD, large[i : i + 20_000], ADMIN)
            insert_s = time.perf_counter() - t0
            log(f"inserted {SMALL + LARGE} LoRAs in {insert_s:.0f}s")

            t0 = time.perf_counter()
            catalog = (await registry.catalogs.get(SMALL_GUILD)).warm()
            catalog_build_s = time.perf_counter() - t0

            requests = make_requests(small, 2_000, seed=3)
            bench_validate(catalog, requests[:100])  # warm-up
            # Three rounds: on a shared 2-core machine one round's wall-clock p99 is mostly
            # other processes preempting this one; every round is reported, the median leads.
            rounds: list[tuple[list[float], list[float]]] = []
            for _ in range(VALIDATE_ROUNDS):
                cpu_times: list[float] = []
                rounds.append((bench_validate(catalog, requests, cpu_times), cpu_times))
            rounds.sort(key=lambda r: p(r[0], 0.99))
            fast, fast_cpu = rounds[len(rounds) // 2]
            log(f"validate done {time.perf_counter() - started:.0f}s")
            baseline_catalog = DifflibCatalog(
                SMALL_GUILD, catalog.settings, catalog.models.values(), catalog.loras.values()
            )
            slow = bench_validate(baseline_catalog, requests[:BASELINE_VALIDATE])
            fast_same = fast[:BASELINE_VALIDATE]
            log(f"baseline validate done {time.perf_counter() - started:.0f}s")

            queries = autocomplete_queries(large, 600, seed=4)
            ours_cpu: list[float] = []
            ours = await timed(
                [
                    (lambda q=q, a=a: registry.loras.autocomplete(LARGE_GUILD, q, architecture=a))
                    for q, a in queries
                ],
                ours_cpu,
            )
            log(f"autocomplete done {time.perf_counter() - started:.0f}s")
            scan = await timed(
                [
                    (lambda q=q, a=a: like_scan(registry, LARGE_GUILD, q, a))
                    for q, a in queries[:BASELINE_AUTOCOMPLETE]
                ]
            )
            ours_same = ours[:BASELINE_AUTOCOMPLETE]
            log(f"baseline autocomplete done {time.perf_counter() - started:.0f}s")
            search = await timed(
                [
                    (lambda q=q: registry.loras.search(LARGE_GUILD, q, sort="most_used"))
                    for q, _ in queries[:100]
                ]
            )
        finally:
            await registry.close()

    validate_stats, baseline_validate = ms(fast), ms(slow)
    auto_stats, baseline_auto = ms(ours), ms(scan)
    return {
        "validate_p99_ms": validate_stats["p99_ms"],
        "validate_p50_ms": validate_stats["p50_ms"],
        "validate_cpu_p99_ms": ms(fast_cpu)["p99_ms"],
        "validate_rounds_p99_ms": [ms(r[0])["p99_ms"] for r in rounds],
        "validate_loras": SMALL,
        "validate_calls": validate_stats["calls"],
        "validate_target_ms": 2.0,
        "validate_baseline": "same validator, suggestions by difflib.get_close_matches over all names + trigger words",
        "validate_baseline_p99_ms": baseline_validate["p99_ms"],
        "validate_baseline_p50_ms": baseline_validate["p50_ms"],
        "validate_same_requests_p99_ms": ms(fast_same)["p99_ms"],
        "validate_speedup_p99": round(
            baseline_validate["p99_ms"] / max(ms(fast_same)["p99_ms"], 1e-9), 1
        ),
        "autocomplete_p99_ms": auto_stats["p99_ms"],
        "autocomplete_p50_ms": auto_stats["p50_ms"],
        "autocomplete_cpu_p99_ms": ms(ours_cpu)["p99_ms"],
        "autocomplete_loras": LARGE,
        "autocomplete_calls": auto_stats["calls"],
        "autocomplete_target_ms": 30.0,
        "autocomplete_baseline": "LIKE '%text%' on name and trigger words, ORDER BY name LIMIT 25, same connection",
        "autocomplete_baseline_p99_ms": baseline_auto["p99_ms"],
        "autocomplete_baseline_p50_ms": baseline_auto["p50_ms"],
        "autocomplete_same_queries_p99_ms": ms(ours_same)["p99_ms"],
        "autocomplete_speedup_p99": round(
            baseline_auto["p99_ms"] / max(ms(ours_same)["p99_ms"], 1e-9), 1
        ),
        "search_fts_p99_ms_100k": ms(search)["p99_ms"],
        "catalog_build_s_10k": round(catalog_build_s, 3),
        "insert_s_110k": round(insert_s, 2),
        "total_s": round(time.perf_counter() - started, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
