"""From raw runs to what people read: per-method, per-category metrics (medians across
repeats, with their spread), the losslessness check, report.md, results.json and plots."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from adaspec.bench.methods import Run

OVERALL = "overall"
RSS_NOTE = (
    "Process peak RSS is the bench process's high-water mark after a method's runs: every "
    "method shares one process and its loaded models, so it only grows down the table and "
    "bounds, rather than measures, one method's memory."
)
DECODE_NOTE = (
    "Tokens after the first over the time after the prefill (adaspec methods only: peers do not "
    "report their prefill). The prefill is the same work for every method; on a shared CPU its "
    "noise on long prompts can exceed the effect of speculation."
)
PLAIN_DRAFT_SHARE = 0.01  # drafting (lookups that found nothing) this small is not work
PLAIN_MARK = "°"
PLAIN_NOTE = (
    f"{PLAIN_MARK}: the method verified no draft in any run of that cell and drafted for under "
    f"{PLAIN_DRAFT_SHARE:.0%} of its time: plain decoding, the baseline's own work, so its "
    "distance from 1.00× is the machine's noise on identical work."
)


@dataclass(frozen=True)
class Cell:
    """One method on one category (or overall): tokens/s per repeat, then summaries."""

    tokens_per_s: float  # median over repeats of (sum tokens / sum time)
    spread: tuple[float, float]  # min and max over repeats
    decode_tokens_per_s: float | None  # the same after the prefill; None for peers
    mean_accepted: float | None  # new tokens per target forward
    acceptance_rate: float | None
    forwards_per_token: float | None
    draft_share: float | None  # share of wall time spent drafting
    verify_share: float | None
    peak_rss_mb: float
    drafted: int | None = None  # draft tokens verified, over every run

    @property
    def plain(self) -> bool:
        """Whether this was plain decoding: no draft verified and next to no time spent
        drafting, so its runs did the baseline's work."""
        return self.drafted == 0 and (self.draft_share or 0.0) < PLAIN_DRAFT_SHARE


def cell(runs: Sequence[Run]) -> Cell:
    by_repeat: dict[int, list[Run]] = defaultdict(list)
    for run in runs:
        by_repeat[run.repeat].append(run)
    rates = [sum(r.new_tokens for r in rs) / sum(r.wall_s for r in rs) for rs in by_repeat.values()]
    decode_rates = [_decode_rate(rs) for rs in by_repeat.values()]
    tokens = sum(r.new_tokens for r in runs)
    wall = sum(r.wall_s for r in runs)
    forwards = _total(runs, "target_forwards")
    drafted, accepted = _total(runs, "drafted"), _total(runs, "accepted")
    return Cell(
        tokens_per_s=statistics.median(rates),
        spread=(min(rates), max(rates)),
        decode_tokens_per_s=None if None in decode_rates else statistics.median(decode_rates),
        mean_accepted=tokens / forwards if forwards else None,
        acceptance_rate=accepted / drafted if drafted else None,  # nothing drafted: no rate
        forwards_per_token=forwards / tokens if forwards and tokens else None,
        draft_share=_share(runs, "draft_s", wall),
        verify_share=_share(runs, "verify_s", wall),
        peak_rss_mb=max(r.peak_rss_mb for r in runs),
        drafted=drafted,
    )


def _decode_rate(runs: Sequence[Run]) -> float | None:
    """Tokens after the first per second after the prefill: the part speculation changes.

    The prompt's forward is the same work for every method, and on long prompts its run-to-run
    noise on a shared CPU can be larger than the whole effect of speculation."""
    if any(r.prefill_s is None for r in runs):
        return None
    seconds = sum(r.wall_s - r.prefill_s for r in runs)
    tokens = sum(max(r.new_tokens - 1, 0) for r in runs)
    return tokens / seconds if seconds > 0 else None


def _total(runs: Sequence[Run], name: str) -> int | None:
    values = [getattr(r, name) for r in runs]
    return None if any(v is None for v in values) else sum(values)


def _share(runs: Sequence[Run], name: str, wall: float) -> float | None:
    total = _total(runs, name)
    return total / wall if total is not None and wall > 0 else None


def table(runs: Sequence[Run]) -> dict[str, dict[str, Cell]]:
    """method -> category (and "overall") -> Cell, methods and categories in run order."""
    methods = list(dict.fromkeys(r.method for r in runs))
    categories = list(dict.fromkeys(r.category for r in runs))
    out: dict[str, dict[str, Cell]] = {}
    for method in methods:
        mine = [r for r in runs if r.method == method]
        out[method] = {c: cell([r for r in mine if r.category == c]) for c in categories}
        out[method][OVERALL] = cell(mine)
    return out


def repeat_noise(runs: Sequence[Run], baseline: str) -> tuple[float, float, int] | None:
    """How much identical work varied: for each question the baseline ran more than once,
    its fastest repeat's tokens/s over its slowest's, minus one. The median and the largest
    of these, and over how many questions; None with one repeat. A speedup cell within
    this of 1.00× says nothing either way."""
    rates: dict[int | str, list[float]] = defaultdict(list)
    for run in runs:
        if run.method == baseline and run.wall_s > 0:
            rates[run.question_id].append(run.new_tokens / run.wall_s)
    spreads = [max(r) / min(r) - 1 for r in rates.values() if len(r) > 1 and min(r) > 0]
    if not spreads:
        return None
    return statistics.median(spreads), max(spreads), len(spreads)


def mismatches(runs: Sequence[Run], baseline: str) -> list[str]:
    """Every adaspec run whose token ids differ from the baseline's on the same question:
    lengths included, so a truncated output cannot hide behind zip()."""
    want = {(r.question_id, r.repeat): r.token_ids for r in runs if r.method == baseline}
    problems = []
    for run in runs:
        if run.method == baseline or run.token_ids is None:
            continue
        expected = want.get((run.question_id, run.repeat))
        if expected is not None and run.token_ids != expected:
            first = next(
                (
                    i
                    for i, (a, b) in enumerate(zip(run.token_ids, expected, strict=False))
                    if a != b
                ),
                min(len(run.token_ids), len(expected)),
            )
            problems.append(
                f"{run.method} on question {run.question_id} (repeat {run.repeat}): "
                f"differs from {baseline} at token {first} "
                f"({len(run.token_ids)} vs {len(expected)} tokens)"
            )
    return problems


def markdown(
    cells: dict[str, dict[str, Cell]],
    baseline: str,
    peers: Sequence[str],
    problems: Sequence[str],
    header: str,
    noise: tuple[float, float, int] | None = None,
) -> str:
    categories = [c for c in next(iter(cells.values())) if c != OVERALL]
    fastest_peer = max(peers, key=lambda p: cells[p][OVERALL].tokens_per_s) if peers else None
    base = cells[baseline]
    lines = [header, "", "## Speedup over adaspec autoregressive (`" + baseline + "`)", ""]
    lines += _speedup_rows(cells, baseline, categories, lambda c: c.tokens_per_s)
    if any(row[c].plain for m, row in cells.items() if m != baseline for c in row):
        lines += ["", PLAIN_NOTE]
    if noise is not None:
        median, largest, n = noise
        lines += [
            "",
            f"Noise on identical work: `{baseline}`'s repeats of one question differed by a "
            f"median {median:.0%} in tokens/s (at most {largest:.0%}, over {n} questions).",
        ]
    decoding = {m: row for m, row in cells.items() if row[OVERALL].decode_tokens_per_s is not None}
    if baseline in decoding:
        lines += ["", "## Decode only: the same, with each prompt's prefill left out", ""]
        lines += [DECODE_NOTE, ""]
        lines += _speedup_rows(decoding, baseline, categories, lambda c: c.decode_tokens_per_s)
    lines += ["", "## Overall, per method", ""]
    lines.append(
        "| method | tokens/s (min–max) | vs baseline | vs fastest peer | acceptance | "
        "forwards/token | draft share | verify share | process peak RSS (MB) |"
    )
    lines.append("|---" * 9 + "|")
    for method, row in cells.items():
        c = row[OVERALL]
        vs_peer = (
            f"{c.tokens_per_s / cells[fastest_peer][OVERALL].tokens_per_s:.2f}×"
            if fastest_peer
            else "–"
        )
        lines.append(
            f"| {method} | {c.tokens_per_s:.2f} ({c.spread[0]:.2f}–{c.spread[1]:.2f}) | "
            f"{c.tokens_per_s / base[OVERALL].tokens_per_s:.2f}× | {vs_peer} | "
            f"{_pct(c.acceptance_rate)} | {_num(c.forwards_per_token)} | {_pct(c.draft_share)} | "
            f"{_pct(c.verify_share)} | {c.peak_rss_mb:.0f} |"
        )
    lines += ["", RSS_NOTE, "", "## Losslessness check", ""]
    if problems:
        lines += [f"**FAILED: {len(problems)} run(s) differ from `{baseline}`**", ""]
        lines += [f"- {p}" for p in problems]
    else:
        lines.append(f"Every adaspec method produced exactly the token ids of `{baseline}`.")
    if fastest_peer:
        lines += ["", f"Fastest peer overall: `{fastest_peer}`."]
    return "\n".join(lines) + "\n"


def _speedup_rows(
    cells: dict[str, dict[str, Cell]],
    baseline: str,
    categories: Sequence[str],
    rate: Callable[[Cell], float | None],
) -> list[str]:
    """A markdown table: each method's rate over the baseline's, per category and overall."""
    lines = ["| method | " + " | ".join(categories) + " | overall | mean accepted |"]
    lines.append("|---" * (len(categories) + 3) + "|")
    base = cells[baseline]
    for method, row in cells.items():
        speedups = [
            f"{rate(row[c]) / rate(base[c]):.2f}×"
            + (PLAIN_MARK if method != baseline and row[c].plain else "")
            for c in [*categories, OVERALL]
        ]
        lines.append(
            f"| {method} | " + " | ".join(speedups) + f" | {_num(row[OVERALL].mean_accepted)} |"
        )
    return lines


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def write_results(path: Path, runs: Sequence[Run], meta: dict) -> None:
    path.write_text(json.dumps({"meta": meta, "runs": [asdict(r) for r in runs]}, indent=1))


def plots(
    out_dir: Path, cells: dict[str, dict[str, Cell]], runs: Sequence[Run], baseline: str
) -> list[Path]:
    """speedup.png (per category per method) and accepted.png (accepted tokens per step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    categories = [c for c in next(iter(cells.values()))]
    methods = list(cells)
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(8, len(categories) * 0.9), 4.5))
    for i, method in enumerate(methods):
        values = [
            cells[method][c].tokens_per_s / cells[baseline][c].tokens_per_s for c in categories
        ]
        ax.bar([x + i * width for x in range(len(categories))], values, width, label=method)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(
        [x + 0.4 - width / 2 for x in range(len(categories))], categories, rotation=30, ha="right"
    )
    ax.set_ylabel(f"speedup over {baseline}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside, not on, the bars
    fig.tight_layout()
    speedup = out_dir / "speedup.png"
    fig.savefig(speedup, dpi=110)
    plt.close(fig)

    steps = {m: [a for r in runs if r.method == m for a in r.accepted_per_step] for m in methods}
    steps = {m: s for m, s in steps.items() if any(s)}
    fig, ax = plt.subplots(figsize=(7, 4))
    top = max((max(s) for s in steps.values()), default=1)
    for method, accepted in steps.items():
        ax.hist(accepted, bins=range(top + 2), alpha=0.5, label=method, density=True)
    ax.set_xlabel("draft tokens accepted per target forward")
    ax.set_ylabel("share of steps")
    if steps:
        ax.legend(fontsize=7)
    fig.tight_layout()
    accepted_png = out_dir / "accepted.png"
    fig.savefig(accepted_png, dpi=110)
    plt.close(fig)
    return [speedup, accepted_png]
