"""The measured cost of a target forward over k new tokens, per model, backend and threads.

On a CPU, verifying k tokens costs far more than one (unlike on a GPU), so how much to
speculate must come from measurement on this machine. A CostProfile is plain data: the
median milliseconds of ``forward(k)`` after a given context, saved as JSON in the cache.
"""

from __future__ import annotations

import json
import logging
import platform
import random
import statistics
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import accumulate
from pathlib import Path
from time import perf_counter

from adaspec.backends.base import Backend, SlotRows, forward_slots, slot_of
from adaspec.models import cache_dir

log = logging.getLogger("adaspec")
DEFAULT_KS = (1, 2, 3, 4, 6, 8, 12, 16)
DEFAULT_CONTEXTS = (128, 512, 1024)
# What a first load times when no profile is saved: the sizes goodput plans with first.
QUICK_KS = (1, 2, 3, 4, 6, 8)
QUICK_CONTEXT = 128
QUICK_REPEATS = 3
# A timing whose repeats differ by more than this share of their median (and a few ms, the
# jitter of any forward) was taken while the machine was busy: good enough to plan one run
# with, not to keep for every later one.
STEADY_SPREAD = 0.5
STEADY_JITTER_MS = 5.0


@dataclass(frozen=True)
class CostProfile:
    model: str
    backend: str
    threads: int
    ks: list[int]
    contexts: list[int]
    ms: list[list[float]]  # [len(contexts), len(ks)]: median ms of forward(k) after context
    spread_ms: list[list[float]]  # same shape: max - min over the repeats
    cpu: str = ""  # the processor it was timed on ("": a file older than this field)
    # Requests a pass's rows were spread over when timed (k rows over min(k, slots) caches,
    # one pass): the cost of a server's shared step by its total rows.
    slots: int = 1

    def cost_ms(self, k: int, context: int) -> float:
        """Forward cost for k tokens: the nearest measured context, linear in k between
        measured points and extrapolated from the last two beyond them. A point timed below
        a smaller k's is read as that one's cost: a forward over more positions does not cost
        less, and a profile timed under load (8 positions at 543 ms after 4 at 696) made
        8-token drafts look cheap enough to verify at almost any acceptance."""
        nearest = min(range(len(self.contexts)), key=lambda i: abs(self.contexts[i] - context))
        row = list(accumulate(self.ms[nearest], max))
        ks = self.ks
        if k <= ks[0]:
            return row[0] * k / ks[0]
        i = min(bisect_left(ks, k), len(ks) - 1)
        k0, k1, m0, m1 = ks[i - 1], ks[i], row[i - 1], row[i]
        return m0 + (m1 - m0) * (k - k0) / (k1 - k0)

    def steady(self) -> bool:
        """Whether every point's repeats agree within STEADY_SPREAD of their median."""
        rows = zip(self.ms, self.spread_ms, strict=True)
        return all(
            spread <= STEADY_SPREAD * ms + STEADY_JITTER_MS
            for row, spreads in rows
            for ms, spread in zip(row, spreads, strict=True)
        )

    def save(self, path: Path | None = None) -> Path:
        path = path or profile_path(self.model, self.backend, self.threads, self.slots)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def load(cls, path: Path) -> CostProfile:
        return cls(**json.loads(path.read_text()))


def profile_path(model: str, backend: str, threads: int, slots: int = 1) -> Path:
    """One file per model, backend, threads and slots a pass was spread over: a profile
    timed for a server's shared passes (``--slots 8``) prices one request's k rows as k
    requests' rows, each reading its own cache, so it must not replace a lone request's."""
    spread = f"-s{slots}" if slots > 1 else ""
    return cache_dir() / "profiles" / f"{model_stem(model)}-{backend}-t{threads}{spread}.json"


def model_stem(model: str) -> str:
    """A model file's name in the cache files timed for it."""
    return Path(model).name.removesuffix(".gguf")


def plain_tokens(vocab_size: int, n: int) -> list[int]:
    """n fixed pseudo-random ids from the plain-word range of a vocabulary: timing input
    that is the same on every run."""
    rng = random.Random(0)
    low, high = min(1000, vocab_size // 2), min(vocab_size, 30000)
    return [rng.randrange(low, high) for _ in range(n)]


def planning_profile(backend: Backend) -> CostProfile | None:
    """What a policy plans a backend's forwards with: the profile they are charged by,
    where the backend carries one (``cost_profile``: a replay's scripted target), else the
    one saved on this machine (None: neither). A replay must plan with the costs it will
    pay, not with a profile saved here for a model of the same name."""
    return getattr(backend, "cost_profile", None) or saved_profile(backend)


def saved_profile(backend: Backend) -> CostProfile | None:
    """The profile saved for this backend's model and threads, unless it was timed on
    another processor: a cache directory shared between machines (a network home, a copied
    image) must not make one machine plan with another's costs."""
    for slots in dict.fromkeys((getattr(backend, "slots", 1), 1)):  # its slots', else one's
        path = profile_path(backend.label, backend.name, backend.threads, slots)
        if path.exists():
            profile = CostProfile.load(path)
            if profile.cpu in ("", cpu_name()):
                return profile
    return None


def machine_profile(backend: Backend, clock: Callable[[], float] = perf_counter) -> CostProfile:
    """The backend's given profile; else the one saved for this model, backend, threads and
    CPU, or one timed now (forwards over 1 to 8 positions after a short context: seconds,
    once) and saved. Without it a process's first requests would learn what verifying costs
    by paying for drafts that could not win (on a CPU, 2 positions cost twice one). One timed
    while something else ran (repeats far apart) plans this run only and is not saved."""
    saved = planning_profile(backend)
    if saved is not None:
        return saved
    context = max(1, min(QUICK_CONTEXT, backend.context_length - max(QUICK_KS) - 1))
    profile = measure(backend, QUICK_KS, [context], QUICK_REPEATS, clock=clock)
    if profile.steady():
        profile.save()
    else:
        log.warning(
            "the machine was busy while adaspec timed %s's forwards: planning with them for "
            "this run only (`adaspec profile` times and saves them for good)",
            backend.label,
        )
    return profile


def measure(
    backend: Backend,
    ks: Sequence[int] = DEFAULT_KS,
    contexts: Sequence[int] = DEFAULT_CONTEXTS,
    repeats: int = 5,
    on_point: Callable[[int, int, float], None] | None = None,
    clock: Callable[[], float] = perf_counter,
    slots: int = 1,
) -> CostProfile:
    """Time ``forward(k)`` after each context: one warm-up, then the median of repeats.
    ``slots`` > 1: a pass over k rows spread evenly over min(k, slots) of the backend's
    slots, each holding the context (a server's shared step)."""
    tokens = plain_tokens(backend.vocab_size, max(contexts) + max(ks))
    views = [slot_of(backend, i) for i in range(slots)]
    table, spread = [], []
    backend.reset()  # warm-up of the whole model (page cache, allocators) before any timing
    backend.prefill(tokens[: min(contexts)])
    backend.forward(tokens[: min(max(ks), backend.context_length - min(contexts))])
    for context in contexts:
        for view in views:
            view.reset()
            view.prefill(tokens[:context])
        after = tokens[context:]
        times = [
            time_pass(backend, spread_rows(after, k, slots), context, repeats, clock) for k in ks
        ]
        table.append([round(statistics.median(t), 2) for t in times])
        spread.append([round(max(t) - min(t), 2) for t in times])
        for k, ms in zip(ks, table[-1], strict=True):
            if on_point:
                on_point(context, k, ms)
    return CostProfile(
        backend.label,
        backend.name,
        backend.threads,
        list(ks),
        list(contexts),
        table,
        spread,
        cpu_name(),
        slots,
    )


def spread_rows(tokens: Sequence[int], k: int, slots: int) -> list[SlotRows]:
    """k rows of ``tokens`` spread evenly over the first min(k, slots) slots."""
    used = min(k, slots)
    return [(i, tokens[: k // used + (i < k % used)], None) for i in range(used)]


def time_forward(
    backend: Backend,
    draft: list[int],
    context: int,
    repeats: int,
    clock: Callable[[], float] = perf_counter,
) -> list[float]:
    """Milliseconds of ``repeats`` forwards over ``draft`` after ``context`` tokens (each
    rolled back), after one untimed warm-up."""
    return time_pass(backend, [(0, draft, None)], context, repeats, clock)


def time_pass(
    backend: Backend,
    rows: Sequence[SlotRows],
    context: int,
    repeats: int,
    clock: Callable[[], float] = perf_counter,
) -> list[float]:
    """``time_forward`` of several slots' rows in one pass, each slot holding ``context``
    tokens (a batch of one is that slot's forward)."""
    times = []
    for i in range(repeats + 1):
        started = clock()
        float(forward_slots(backend, rows)[-1][-1, 0])  # reading a value waits for the device
        elapsed = (clock() - started) * 1000
        for slot, _, _ in rows:
            slot_of(backend, slot).rollback(context)
        if i:  # the first run is the warm-up
            times.append(elapsed)
    return times


def cpu_name() -> str:
    """The processor's model name: costs measured on one CPU say little of another."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
