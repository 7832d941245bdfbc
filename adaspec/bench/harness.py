"""``adaspec bench``: load the pair once, build the methods and peers, measure, report."""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from adaspec.api import encode_prompt, load_backend
from adaspec.bench import peers as peer_factories
from adaspec.bench import report
from adaspec.bench.methods import AdaspecMethod, Method, PeerGroup
from adaspec.bench.questions import load_questions, select
from adaspec.bench.runner import Tick, measure
from adaspec.drafters.options import DEFAULT_OPTIONS
from adaspec.errors import ConfigError
from adaspec.models import DEFAULT_DRAFT, DEFAULT_TARGET, NAMED_MODELS, resolve_model
from adaspec.profile import cpu_name

BASELINE = "none"
# The adaptive default (with the draft model as one of auto's arms) and one classic
# fixed-rule method; methods that always draft with the model (e.g. model:confidence) are
# opt-in: on a CPU where the draft costs half a target step they only show it loses.
DEFAULT_METHODS = ("none", "auto:goodput", "ngram:heuristic")


@dataclass(frozen=True)
class BenchOptions:
    questions: Path
    target: str = DEFAULT_TARGET
    draft: str | None = DEFAULT_DRAFT
    backend: str = "auto"
    categories: Sequence[str] | None = None
    per_category: int | None = 1
    max_new_tokens: int = 64
    methods: Sequence[str] = DEFAULT_METHODS
    peers: bool = True
    repeats: int = 1
    k: int | None = None
    threads: int | None = None
    device: str | None = None
    dtype: str | None = None
    out: Path = Path("bench-out")
    resume: bool = False
    context: int | None = None
    record_rows: int = 0  # the baseline keeps its rows' top-k for replay (0: none)
    suffix_cache_tokens: int = DEFAULT_OPTIONS.suffix_cache_tokens
    draft_window: int = DEFAULT_OPTIONS.draft_window


@dataclass
class BenchOutcome:
    report_path: Path
    problems: list[str]
    markdown: str


def run_bench(
    options: BenchOptions, on_tick: Callable[[Tick], None] = lambda t: None
) -> BenchOutcome:
    questions = select(load_questions(options.questions), options.categories, options.per_category)
    methods_spec = list(dict.fromkeys([BASELINE, *options.methods]))
    target = _load(options, options.target)
    uses_draft = any(AdaspecMethod.uses_draft(m) for m in methods_spec)
    draft = _load(options, options.draft, drafting=True) if uses_draft and options.draft else None
    methods: list[Method] = [
        AdaspecMethod(
            m,
            target,
            draft,
            options.k,
            record_rows=_rows_for(m, options),
            suffix_cache_tokens=options.suffix_cache_tokens,
            draft_window=options.draft_window,
        )
        for m in methods_spec
    ]
    groups, notes = _peers(options, target, draft) if options.peers else ([], [])
    runs = measure(
        methods,
        questions,
        lambda text: encode_prompt(target.tokenizer, text, chat=True),
        options.max_new_tokens,
        options.repeats,
        options.out,
        options.resume,
        on_tick,
        groups,
    )
    cells = report.table(runs)
    problems = report.mismatches(runs, BASELINE)
    meta = _meta(options, target, len(questions), notes)
    meta["peak_rss_mb"] = max((r.peak_rss_mb for r in runs), default=0.0)
    report.write_results(options.out / "results.json", runs, meta)
    report.plots(options.out, cells, runs, BASELINE)
    noise = report.repeat_noise(runs, BASELINE)
    header = _header(meta, notes)
    peer_names = [name for group in groups for name in group.names]
    text = report.markdown(cells, BASELINE, peer_names, problems, header, noise)
    path = options.out / "report.md"
    path.write_text(text)
    return BenchOutcome(path, problems, text)


def _rows_for(method: str, options: BenchOptions) -> int:
    return options.record_rows if method == BASELINE else 0


def _load(options: BenchOptions, model: str, drafting: bool = False):
    return load_backend(
        model,
        options.backend,
        options.device,
        options.dtype,
        options.threads,
        drafting,
        options.context,
    )


def _peers(options: BenchOptions, target, draft) -> tuple[list[PeerGroup], list[str]]:
    target_path = resolve_model(options.target)
    if target.name == "llama.cpp":
        return peer_factories.llama_cpp_peers(target_path, target.threads, target.context_length)
    from adaspec.backends.torch_hf import hf_folder

    peer_draft = None
    if draft is not None and draft.name == "torch":
        # The model adaspec drafts with (unpacked; bf16 on a CPU with bf16 instructions):
        # assisted generation gets as cheap a draft, and the weights are not held twice.
        peer_draft = draft.model
    elif options.draft:
        peer_draft = hf_folder(resolve_model(options.draft))
    return peer_factories.transformers_peers(
        hf_folder(target_path), peer_draft, target.device, target.model.dtype
    )


def _meta(options: BenchOptions, target, n_questions: int, notes: list[str]) -> dict:
    return {
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_name(),
            "python": platform.python_version(),
        },
        "backend": target.name,
        "device": _device(target),
        "threads": target.threads,
        "versions": {
            p: _version(p) for p in ("adaspec", "torch", "transformers", "llama-cpp-python")
        },
        "models": {m: _checksum(m) for m in (options.target, options.draft) if m},
        "questions": str(options.questions),
        "n_questions": n_questions,
        "max_new_tokens": options.max_new_tokens,
        "repeats": options.repeats,
        "notes": notes,
    }


def _header(meta: dict, notes: list[str]) -> str:
    lines = [
        "# adaspec bench",
        "",
        f"{meta['n_questions']} questions (first turn, chat template), greedy, "
        f"{meta['max_new_tokens']} new tokens at most, "
        f"{meta['repeats']} repeat(s) after a warm-up, "
        f"methods interleaved per question. Backend {meta['backend']} on {meta['device']}, "
        f"{meta['threads']} CPU threads, {meta['machine']['processor']}. "
        f"Peak memory (RSS) of the bench process: {meta['peak_rss_mb']:.0f} MB; each peer's "
        "models are loaded only while that peer runs.",
    ]
    lines += [f"- note: {n}" for n in notes]
    return "\n".join(lines)


def _device(target) -> str:
    """Where the target runs: ``cpu``, or the GPU's name and the weights' dtype."""
    device = getattr(target, "device", None)
    if device is None or device.type == "cpu":
        return "cpu"
    import torch

    dtype = str(target.model.dtype).removeprefix("torch.")
    return f"{torch.cuda.get_device_name(device)} ({device}, {dtype})"


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _checksum(model: str) -> str:
    spec = NAMED_MODELS.get(model)
    return f"sha256:{spec.sha256}" if spec else str(resolve_model(model))


def check_methods(specs: Sequence[str]) -> None:
    for spec in specs:
        AdaspecMethod.parse(spec)
    if not specs:
        raise ConfigError("--methods is empty; give e.g. none,ngram:heuristic")
