"""From one load level's requests to what people read: the level's numbers, results.json,
report.md (a table per level, servers side by side) and throughput.png, and the progress a
terminal shows while the load runs."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console

from adaspec.bench.load_client import RequestRecord

if TYPE_CHECKING:
    from adaspec.bench.serve_bench import Tick

CHUNKS_MARK = "†"
CHUNKS_NOTE = (
    f"{CHUNKS_MARK} tokens counted from chunks: the server sent no usage, so each streamed "
    "chunk with text counts as one token (llama_cpp.server sends one per token)."
)


@dataclass(frozen=True)
class Level:
    """One server at one concurrency. Rates are over the level's wall time, from its first
    send to its last answer; latencies are over the requests that succeeded."""

    concurrency: int
    requests: int
    failed: int
    wall_s: float
    output_tokens: int  # of the requests that succeeded
    tokens_per_s: float
    requests_per_s: float  # requests that succeeded, per second
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    itl_p50_s: float | None  # per token, pooled over every request's gaps
    itl_p95_s: float | None
    tokens_from_chunks: bool  # some request's tokens were counted from chunks (no usage)
    later_ttft_p50_s: float | None  # over requests after a conversation's first turn
    cached_share: float | None  # prompt tokens the servers had cached, of those they said
    errors: dict[str, int]  # error -> how many requests ended with it
    records: list[RequestRecord]


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def summarize(concurrency: int, records: Sequence[RequestRecord]) -> Level:
    good = [r for r in records if r.ok]
    wall = max(r.start_s + r.latency_s for r in records) - min(r.start_s for r in records)
    tokens = sum(r.output_tokens for r in good)
    ttft = [r.ttft_s for r in good if r.ttft_s is not None]
    itl = [gap for r in good for gap in r.itl_s]
    return Level(
        concurrency=concurrency,
        requests=len(records),
        failed=len(records) - len(good),
        wall_s=wall,
        output_tokens=tokens,
        tokens_per_s=tokens / wall if wall > 0 else 0.0,
        requests_per_s=len(good) / wall if wall > 0 else 0.0,
        ttft_p50_s=percentile(ttft, 50),
        ttft_p95_s=percentile(ttft, 95),
        itl_p50_s=percentile(itl, 50),
        itl_p95_s=percentile(itl, 95),
        tokens_from_chunks=any(not r.tokens_from_usage for r in good),
        later_ttft_p50_s=percentile([r.ttft_s for r in good if r.turn > 1 and r.ttft_s], 50),
        cached_share=cached_share(good),
        errors=dict(Counter(r.error for r in records if r.error is not None)),
        records=list(records),
    )


def cached_share(records: Sequence[RequestRecord]) -> float | None:
    said = [r for r in records if r.prompt_tokens and r.cached_tokens is not None]
    prompt = sum(r.prompt_tokens or 0 for r in said)
    return sum(r.cached_tokens or 0 for r in said) / prompt if prompt else None


def clients(n: int, noun: str = "client") -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _share(share: float | None) -> str:
    return "–" if share is None else f"{share:.0%}"


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.0f}"


def markdown(meta: dict, levels: dict[str, list[Level]]) -> str:
    """A table per concurrency, one row per server, tokens/s also as a ratio to the first."""
    labels = list(levels)
    lines = [
        "# adaspec bench-serve",
        "",
        f"{meta['date']} · {meta['machine']['platform']} · {meta['machine']['cpus']} CPUs · "
        f"max {meta['max_tokens']} tokens, greedy, streamed · "
        f"{', '.join(f'{k}: {v}' for k, v in meta['models'].items())}",
    ]
    marked = False
    for i, concurrency in enumerate(meta["concurrency"]):
        first = levels[labels[0]][i].tokens_per_s
        lines += ["", f"## {clients(concurrency, 'concurrent client')}", ""]
        turns = meta.get("turns", 1) > 1
        lines += [
            f"| server | tokens/s | × {labels[0]} | requests/s | TTFT p50 ms | TTFT p95 ms "
            "| ITL p50 ms | ITL p95 ms | output tokens | requests | failed |"
            + (" later turns' TTFT p50 ms | prompt cached |" if turns else ""),
            "|---|" + "---:|" * (12 if turns else 10),
        ]
        for label in labels:
            level = levels[label][i]
            mark = CHUNKS_MARK if level.tokens_from_chunks else ""
            marked |= level.tokens_from_chunks
            ratio = f"{level.tokens_per_s / first:.2f}×" if first > 0 else "–"
            lines.append(
                f"| {label} | {level.tokens_per_s:.2f}{mark} | {ratio} | "
                f"{level.requests_per_s:.3f} | {_ms(level.ttft_p50_s)} | {_ms(level.ttft_p95_s)} "
                f"| {_ms(level.itl_p50_s)} | {_ms(level.itl_p95_s)} | {level.output_tokens} | "
                f"{level.requests} | {level.failed} |"
                + (
                    f" {_ms(level.later_ttft_p50_s)} | {_share(level.cached_share)} |"
                    if turns
                    else ""
                )
            )
    lines += ["", *([CHUNKS_NOTE, ""] if marked else []), *failures(levels)]
    return "\n".join(lines).rstrip() + "\n"


def failures(levels: dict[str, list[Level]]) -> list[str]:
    rows = [
        f"- {label}, {clients(level.concurrency)}: {count} × {error}"
        for label, server_levels in levels.items()
        for level in server_levels
        for error, count in level.errors.items()
    ]
    return ["## Failed requests", "", *rows] if rows else []


def plot(path: Path, levels: dict[str, list[Level]]) -> Path:
    """Tokens/s and p95 TTFT against concurrency, one line per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rate, ttft) = plt.subplots(1, 2, figsize=(10, 4))
    for label, server_levels in levels.items():
        clients = [level.concurrency for level in server_levels]
        rate.plot(clients, [lv.tokens_per_s for lv in server_levels], marker="o", label=label)
        p95 = [np.nan if lv.ttft_p95_s is None else lv.ttft_p95_s for lv in server_levels]
        ttft.plot(clients, p95, marker="o", label=label)
    for ax, name in (
        (rate, "output tokens/s (all clients)"),
        (ttft, "p95 time to first token (s)"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_xticks(clients, [str(c) for c in clients])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(name)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    rate.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(out: Path, meta: dict, levels: dict[str, list[Level]]) -> tuple[str, list[Path]]:
    """results.json (meta, then every level with its raw records), report.md, throughput.png."""
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.json"
    servers = [
        {"url": url, "label": label, "model": meta["models"][label], "levels": levels[label]}
        for url, label in zip(meta["urls"], meta["labels"], strict=True)
    ]
    for server in servers:
        server["levels"] = [asdict(level) for level in server["levels"]]
    results.write_text(json.dumps({"meta": meta, "servers": servers}, indent=1))
    text = markdown(meta, levels)
    report = out / "report.md"
    report.write_text(text)
    return text, [results, report, plot(out / "throughput.png", levels)]


@contextmanager
def progress(err: Console, total: int) -> Iterator[Callable[[Tick], None]]:
    """A bar on a terminal; elsewhere (a log, CI) one line per finished level."""
    if not err.is_terminal:
        yield lambda tick: _print_level(err, tick)
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} requests"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=err) as bar:
        task = bar.add_task("checking servers", total=total)

        def update(tick: Tick) -> None:
            bar.update(task, completed=tick.done, description=tick.where)
            _print_level(bar.console, tick)

        yield update


def _print_level(console: Console, tick: Tick) -> None:
    level = tick.level
    if level is None:
        return
    console.print(
        f"{tick.where}: {level.output_tokens} tokens in "
        f"{level.wall_s:.1f} s = {level.tokens_per_s:.2f} tok/s, "
        f"{level.requests - level.failed}/{level.requests} requests ok",
        highlight=False,
        soft_wrap=True,
    )
