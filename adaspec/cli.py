"""The ``adaspec`` command line. User mistakes become one line on stderr and exit code 1."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from adaspec import __version__, models
from adaspec.api import encode_prompt
from adaspec.bench.harness import DEFAULT_METHODS
from adaspec.build import EngineSpec, build_engine
from adaspec.cli_options import (
    Backend,
    Context,
    Device,
    Draft,
    DraftBackend,
    Drafter,
    DraftWindow,
    Dtype,
    K,
    Policy,
    Questions,
    SuffixCacheTokens,
    Target,
    Threads,
    counts,
)
from adaspec.config import GenerationConfig, SamplingParams
from adaspec.drafters.options import DEFAULT_OPTIONS, DrafterOptions
from adaspec.engine import Engine
from adaspec.errors import AdaspecError, ConfigError
from adaspec.server.command import serve
from adaspec.textstream import TextStream

if TYPE_CHECKING:
    from adaspec.bench.replay import Case
    from adaspec.profile import CostProfile

app = typer.Typer(
    help="Adaptive, lossless speculative decoding: faster generation, identical output.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Pull and list the named models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
err = Console(stderr=True)
F = TypeVar("F", bound=Callable)


def user_errors(command: F) -> F:
    """Turn an AdaspecError into one line on stderr and exit 1; bugs still show a traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except AdaspecError as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return run  # type: ignore[return-value]


def read_prompt(prompt: str) -> str:
    """The prompt argument, or standard input for '-', refused unless it is valid UTF-8."""
    if prompt == "-":
        data = sys.stdin.buffer.read()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"the prompt on stdin is not valid UTF-8 (byte {e.start}); "
                "convert it first, e.g. `iconv -f latin1 -t utf-8`"
            ) from None
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:  # bytes the shell passed that are not UTF-8
        raise ConfigError("the prompt is not valid UTF-8; convert it to UTF-8 first") from None
    return prompt


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"adaspec {__version__}")
        raise typer.Exit()


class _StderrLines(logging.Handler):
    """adaspec's progress messages (a conversion that takes minutes) as dim stderr lines."""

    def emit(self, record: logging.LogRecord) -> None:
        err.print(f"[dim]{record.getMessage()}[/]", highlight=False, soft_wrap=True)


def _show_progress_messages() -> None:
    logger = logging.getLogger("adaspec")
    if not any(isinstance(h, _StderrLines) for h in logger.handlers):
        logger.addHandler(_StderrLines())
    logger.setLevel(logging.INFO)


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=show_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Adaptive, lossless speculative decoding: faster generation, identical output."""
    _show_progress_messages()


@app.command()
@user_errors
def generate(
    prompt: Annotated[str, typer.Argument(help="The prompt text ('-' reads stdin).")],
    target: Target = models.DEFAULT_TARGET,
    draft: Draft = None,
    backend: Backend = "auto",
    draft_backend: DraftBackend = None,
    drafter: Drafter = "auto",
    policy: Policy = "goodput",
    k: K = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    top_k: Annotated[int, typer.Option(help="0 = off.")] = 0,
    top_p: Annotated[float, typer.Option(help="1.0 = off.")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling.")] = None,
    chat: Annotated[
        bool, typer.Option("--chat", help="Wrap the prompt in the chat template.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead.")] = False,
    device: Device = None,
    dtype: Dtype = None,
    threads: Threads = None,
    context: Context = None,
    suffix_cache_tokens: SuffixCacheTokens = DEFAULT_OPTIONS.suffix_cache_tokens,
    draft_window: DraftWindow = DEFAULT_OPTIONS.draft_window,
) -> None:
    """Generate text from a prompt, streaming it, then print one line of statistics."""
    text = read_prompt(prompt)
    sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    config = GenerationConfig(max_new_tokens=max_new_tokens, sampling=sampling, seed=seed)
    spec = EngineSpec(
        target=target,
        draft=draft,
        drafter=drafter,
        policy=policy,
        k=k,
        backend=backend,
        draft_backend=draft_backend,
        device=device,
        dtype=dtype,
        threads=threads,
        context=context,
        suffix_cache_tokens=suffix_cache_tokens,
        draft_window=draft_window,
    )
    with err.status(f"loading {target}" + (f" and {draft}" if draft else "")):
        engine = build_engine(spec)
    ids = encode_prompt(engine.target.tokenizer, text, chat)
    if as_json:
        typer.echo(json.dumps(engine.generate(ids, config).to_dict()))
        return
    _stream(engine, ids, config)


def _stream(engine: Engine, ids: list[int], config: GenerationConfig) -> None:
    generation = engine.stream(ids, config)
    text = TextStream(engine.target.tokenizer)
    for new in generation:
        sys.stdout.write(text.push(new))
        sys.stdout.flush()
    sys.stdout.write(text.flush() + "\n")
    s = generation.stats.summary()
    err.print(
        f"[dim]{s['new_tokens']} tokens in {s['wall_s']:.2f} s ({s['tokens_per_s']:.2f} tok/s) · "
        f"mean accepted {s['mean_accepted']:.2f} · acceptance {s['acceptance_rate']:.0%} · "
        f"{s['target_forwards']} target forwards · draft {s['draft_s']:.2f} s · "
        f"verify {s['verify_s']:.2f} s · {generation.finish_reason}[/]",
        highlight=False,
    )


app.command("serve")(user_errors(serve))


@app.command()
@user_errors
def profile(
    target: Annotated[str, typer.Option(help="Model: name, .gguf file or HF folder.")] = (
        models.DEFAULT_TARGET
    ),
    backend: Annotated[str, typer.Option(help="auto | llama.cpp | torch")] = "auto",
    ks: Annotated[str, typer.Option(help="Draft sizes k to time.")] = "1,2,3,4,6,8,12,16",
    contexts: Annotated[str, typer.Option(help="Context lengths to time after.")] = "128,512,1024",
    repeats: Annotated[int, typer.Option(help="Timed repeats per point (after a warm-up).")] = 5,
    slots: Annotated[
        int, typer.Option(help="Spread each pass's k rows over up to this many requests.")
    ] = 1,
    threads: Threads = None,
    device: Device = None,
    context: Context = None,
) -> None:
    """Time the target's forward over k new tokens (with --slots, one pass over k rows of
    several requests: a server's shared step); print the table and save it as JSON."""
    from adaspec.api import load_backend
    from adaspec.profile import measure

    k_list, context_list = counts(ks, "--ks"), counts(contexts, "--contexts")
    if repeats < 1 or slots < 1:
        raise AdaspecError(f"--repeats and --slots must be >= 1, got {repeats} and {slots}")
    with err.status(f"loading {target}"):
        model = load_backend(
            target, backend, device=device, threads=threads, context=context, slots=slots
        )
    if max(context_list) + max(k_list) > model.context_length:
        raise AdaspecError(f"contexts exceed the model's {model.context_length}-token context")
    with err.status("timing forward(k)") as status:
        result = measure(
            model,
            k_list,
            context_list,
            repeats,
            on_point=lambda c, k, ms: status.update(f"context {c}, k={k}: {ms:.1f} ms"),
            slots=slots,
        )
    table = Table(
        title=f"forward(k) ms, median of {repeats} · {result.backend} · {result.threads} threads"
    )
    table.add_column("context")
    for k in k_list:
        table.add_column(f"k={k}", justify="right")
    for context, row in zip(context_list, result.ms, strict=True):
        table.add_row(str(context), *(f"{ms:.1f}" for ms in row))
    Console().print(table)
    err.print(f"saved {result.save()}")


@app.command()
@user_errors
def bench(
    questions: Annotated[
        Path | None, typer.Option(help="Spec-Bench JSONL (default: the shipped 480 questions).")
    ] = None,
    categories: Annotated[str | None, typer.Option(help="Comma-separated categories.")] = None,
    per_category: Annotated[int, typer.Option(help="Questions per category (0 = all).")] = 1,
    max_new_tokens: Annotated[int, typer.Option(help="Most new tokens per question.")] = 64,
    methods: Annotated[
        str, typer.Option(help="adaspec drafter[:policy] list; `none` is always the baseline.")
    ] = ",".join(DEFAULT_METHODS),
    peers: Annotated[bool, typer.Option(help="Also measure the peer libraries.")] = True,
    backend: Annotated[str, typer.Option(help="auto | llama.cpp | torch")] = "auto",
    target: Annotated[str, typer.Option(help="Target model.")] = models.DEFAULT_TARGET,
    draft: Annotated[str, typer.Option(help="Draft model.")] = models.DEFAULT_DRAFT,
    k: Annotated[
        int | None, typer.Option("--k", help="Draft length knob of the policies (their default).")
    ] = None,
    repeats: Annotated[int, typer.Option(help="Timed repeats per question and method.")] = 1,
    threads: Threads = None,
    device: Device = None,
    dtype: Dtype = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("bench-out"),
    resume: Annotated[bool, typer.Option(help="Keep the runs already in OUT/runs.jsonl.")] = False,
    context: Context = None,
    record_rows: Annotated[
        int,
        typer.Option(
            help="Keep the baseline's top-k per token, so `adaspec replay` feeds row-learning "
            "drafters (recycling, aded) the target's runners-up (costs the baseline a top-k)."
        ),
    ] = 0,
    suffix_cache_tokens: SuffixCacheTokens = DEFAULT_OPTIONS.suffix_cache_tokens,
    draft_window: DraftWindow = DEFAULT_OPTIONS.draft_window,
) -> None:
    """Spec-Bench on the model pair: adaspec methods and peers side by side, one report."""
    from adaspec.bench.harness import BenchOptions, check_methods, run_bench
    from adaspec.bench.questions import default_questions_path

    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    check_methods(method_list)
    if repeats < 1 or max_new_tokens < 1 or per_category < 0 or record_rows < 0:
        raise AdaspecError(
            "--repeats and --max-new-tokens must be >= 1, --per-category and --record-rows >= 0"
        )
    options = BenchOptions(
        questions=questions or default_questions_path(),
        target=target,
        draft=draft,
        backend=backend,
        categories=[c.strip() for c in categories.split(",")] if categories else None,
        per_category=per_category or None,
        max_new_tokens=max_new_tokens,
        methods=method_list,
        peers=peers,
        repeats=repeats,
        k=k,
        threads=threads,
        device=device,
        dtype=dtype,
        out=out,
        resume=resume,
        context=context,
        record_rows=record_rows,
        suffix_cache_tokens=suffix_cache_tokens,
        draft_window=draft_window,
    )
    with bench_progress() as on_tick:
        outcome = run_bench(options, on_tick)
    Console().print(outcome.markdown, markup=False, highlight=False)
    err.print(
        f"wrote {outcome.report_path}, results.json, speedup.png, accepted.png in {options.out}"
    )
    if outcome.problems:
        err.print(f"[bold red]error:[/] {len(outcome.problems)} run(s) differ from plain decoding")
        raise typer.Exit(1)


@contextmanager
def bench_progress() -> Iterator[Callable]:
    """A bar on a terminal; elsewhere (a log, CI) one line per finished run."""
    if not err.is_terminal:
        yield _print_finished
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=err) as progress:
        task = progress.add_task("loading models", total=None)
        yield lambda tick: progress.update(
            task, completed=tick.done, total=tick.total, description=tick.label
        )


def _print_finished(tick) -> None:
    run = tick.finished
    if run is None or tick.done == 0:
        return
    rate = run.new_tokens / run.wall_s if run.wall_s > 0 else 0.0
    err.print(
        f"[{tick.done}/{tick.total}] {run.method} q{run.question_id} {run.category} "
        f"repeat {run.repeat}: {run.new_tokens} tokens, {rate:.2f} tok/s",
        highlight=False,
        soft_wrap=True,
    )


@app.command("bench-serve")
@user_errors
def bench_serve(
    urls: Annotated[
        list[str], typer.Argument(help="OpenAI-compatible servers, e.g. http://127.0.0.1:8000.")
    ],
    label: Annotated[
        list[str] | None, typer.Option(help="A name per URL, in order (default: host:port).")
    ] = None,
    concurrency: Annotated[str, typer.Option(help="Concurrent clients, one level each.")] = (
        "1,2,4,8"
    ),
    requests: Annotated[
        int | None, typer.Option(help="Requests per level (default: --per-client per client).")
    ] = None,
    per_client: Annotated[int, typer.Option(help="Requests per client at each level.")] = 4,
    questions: Questions = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens per answer.")] = 128,
    model: Annotated[
        str | None, typer.Option(help="Model to ask for (default: each server's first listed).")
    ] = None,
    api_key: Annotated[str, typer.Option(help="Key the servers require.")] = "EMPTY",
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("bench-serve-out"),
    warmup: Annotated[int, typer.Option(help="Unmeasured requests per server first.")] = 1,
    timeout: Annotated[float, typer.Option(help="Seconds one request may take.")] = 300.0,
    turns: Annotated[
        int,
        typer.Option(
            help="Each client's requests as conversations of this many turns, each sent "
            "with the questions and answers before it (a chat's history)."
        ),
    ] = 1,
) -> None:
    """Load OpenAI-compatible servers with concurrent streamed chats, level by level:
    tokens/s, requests/s, time to first token and inter-token latency, side by side."""
    from adaspec.bench.questions import default_questions_path
    from adaspec.bench.serve_bench import ServeBenchOptions, run_serve_bench
    from adaspec.bench.serve_report import progress

    options = ServeBenchOptions(
        urls=tuple(urls),
        labels=tuple(label or ()),
        concurrency=counts(concurrency, "--concurrency"),
        requests=requests,
        per_client=per_client,
        questions=questions or default_questions_path(),
        max_tokens=max_tokens,
        model=model,
        api_key=api_key,
        warmup=warmup,
        timeout=timeout,
        out=out,
        turns=turns,
    )
    with progress(err, options.total_requests()) as on_tick:
        outcome = run_serve_bench(options, on_tick)
    Console().print(outcome.markdown, markup=False, highlight=False, soft_wrap=True)
    err.print(f"wrote results.json, report.md, throughput.png in {out}")


@app.command()
@user_errors
def replay(
    bench_dir: Annotated[Path, typer.Argument(help="A folder `adaspec bench` wrote.")],
    methods: Annotated[
        str, typer.Option(help="adaspec drafter[:policy] list, each compared with `none`.")
    ] = "auto:goodput,ngram:heuristic",
    profile: Annotated[
        Path | None,
        typer.Option(help="Cost profile JSON (default: this machine's for the bench's target)."),
    ] = None,
    concurrency: Annotated[
        str | None,
        typer.Option(help="Requests in flight, e.g. 1,2,4,8,16: aggregate speedups under load."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="With --concurrency: print {level: {method: x}}.")
    ] = False,
    suffix_cache_tokens: SuffixCacheTokens = DEFAULT_OPTIONS.suffix_cache_tokens,
) -> None:
    """Rerun methods over a bench's recorded greedy answers on a profiled clock: what each
    would gain, decode only, without the machine's noise (speed itself: `adaspec bench`)."""
    from adaspec.bench import replay as replaying
    from adaspec.bench.harness import check_methods
    from adaspec.profile import CostProfile

    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    check_methods(method_list)
    cases = replaying.load_cases(bench_dir)
    costs = CostProfile.load(profile) if profile else replaying.saved_profile(bench_dir)
    if concurrency is not None:
        _replay_under_load(method_list, cases, costs, counts(concurrency, "--concurrency"), as_json)
        return
    DrafterOptions(suffix_cache_tokens)  # a bad value fails before replaying
    baseline = replaying.replay(replaying.BASELINE, cases, costs)
    runs = {
        method: replaying.replay(method, cases, costs, suffix_cache_tokens)
        for method in method_list
    }
    ratios = {method: replaying.speedups(baseline, runs[method]) for method in method_list}
    table = Table(title=f"replayed speedup over none, decode only · {len(cases)} answers")
    for column in ["category", *method_list]:
        table.add_column(column)
    for category in [*dict.fromkeys(c.category for c in cases), "overall"]:
        table.add_row(category, *(f"{ratios[m][category]:.3f}×" for m in method_list))
    tried = [
        (sum(r.accepted for r in runs[m]), sum(r.drafted for r in runs[m])) for m in method_list
    ]
    table.add_row("accepted/drafted", *(f"{a}/{d}" for a, d in tried))
    Console().print(table)


def _replay_under_load(
    methods: list[str],
    cases: list[Case],
    costs: CostProfile,
    levels: Sequence[int],
    as_json: bool,
) -> None:
    from adaspec.bench.replay import BASELINE
    from adaspec.bench.replay_load import speedups_under_load

    with err.status(f"replaying {len(cases)} answers at {len(levels)} concurrencies"):
        runs = speedups_under_load(methods, cases, costs, levels)
    ratios = {
        level: {m: by[BASELINE].seconds / run.seconds for m, run in by.items() if m != BASELINE}
        for level, by in runs.items()
    }
    if as_json:
        print(json.dumps({str(level): ratio for level, ratio in ratios.items()}, indent=1))
        return
    table = Table(title=f"replayed aggregate speedup over none, decode only · {len(cases)} answers")
    for column in ["requests", *methods, "best fixed", "draft/step"]:
        table.add_column(column)
    for level, by in runs.items():
        fixed = next(m for m in by if "@" in m)
        shown = [f"{ratios[level][m]:.3f}×" for m in methods]
        drafts = " ".join(f"{by[m].draft_per_step:.2f}" for m in methods)
        table.add_row(str(level), *shown, f"{ratios[level][fixed]:.3f}× {fixed}", drafts)
    Console().print(table)


@app.command("train-head")
@user_errors
def train_head(
    target: Annotated[str, typer.Option(help="Target model.")] = models.DEFAULT_TARGET,
    draft: Annotated[str, typer.Option(help="Draft model the head is for.")] = (
        models.DEFAULT_DRAFT
    ),
    data: Annotated[
        Path | None,
        typer.Option(help="Spec-Bench JSONL of prompts (default: the shipped 480 questions)."),
    ] = None,
    held_out_per_category: Annotated[
        int, typer.Option(help="Skip the first N questions of each category (bench's).")
    ] = 1,
    prompts: Annotated[int, typer.Option(help="Prompts to run the pair on.")] = 26,
    max_new_tokens: Annotated[int, typer.Option(help="Target tokens per prompt.")] = 64,
    steps: Annotated[int, typer.Option(help="Training steps (full batch).")] = 400,
    backend: Annotated[str, typer.Option(help="auto | llama.cpp | torch")] = "auto",
    threads: Threads = None,
    context: Context = None,
    out: Annotated[
        Path | None, typer.Option(help="Where to save (default: beside the draft model).")
    ] = None,
) -> None:
    """Train the acceptance head (SpecDec++) of a draft model; report its calibration."""
    from dataclasses import asdict

    from adaspec.api import load_backend
    from adaspec.bench.questions import default_questions_path, load_questions
    from adaspec.head import head_path
    from adaspec.head_training import collect, reliability, split, train, training_questions

    if prompts < 4 or max_new_tokens < 1 or steps < 1 or held_out_per_category < 0:
        raise AdaspecError("--prompts must be >= 4, --max-new-tokens and --steps >= 1")
    chosen = training_questions(
        load_questions(data or default_questions_path()), held_out_per_category, prompts
    )
    if len(chosen) < 4:
        raise AdaspecError("fewer than 4 prompts left after the held-out ones; pass more --data")
    with err.status(f"loading {target} and {draft}"):
        spec = EngineSpec(target, draft="none", backend=backend, threads=threads, context=context)
        engine = build_engine(spec)
        # As it will draft (bf16 on a CPU with bf16 instructions): the head learns the
        # hidden states it will read.
        draft_model = load_backend(draft, backend, threads=threads, drafting=True, context=context)
    ids = [encode_prompt(engine.target.tokenizer, q.prompt, chat=True) for q in chosen]
    with err.status("running the pair") as status:
        samples = collect(
            engine,
            draft_model,
            ids,
            max_new_tokens,
            lambda i: status.update(f"running the pair: prompt {i}/{len(ids)}"),
        )
    fit, held_out = split(samples)
    head = train(fit, steps)
    report = reliability(head, held_out, base_rate=float(fit.y.mean()))
    table = Table("predicted P(accept)", "tokens", "mean predicted", "observed", title="held-out")
    for row in report.bins:
        low, high = row["range"]
        table.add_row(
            f"{low:.1f}-{high:.1f}",
            str(row["n"]),
            f"{row['predicted']:.3f}",
            f"{row['observed']:.3f}",
        )
    Console().print(table)
    typer.echo(
        f"Brier score {report.brier:.4f} on {report.n} held-out tokens "
        f"(base rate {report.brier_base_rate:.4f}, draft top probability "
        f"{report.brier_draft_top:.4f}); acceptance {report.acceptance_rate:.1%}; "
        f"{len(fit.y)} training tokens from {len(fit.group.unique())} prompts"
    )
    path = head.save(out or head_path(draft_model.label), asdict(report))
    err.print(f"saved {path}")


@models_app.command("pull")
@user_errors
def models_pull(
    names: Annotated[
        list[str] | None, typer.Argument(help="Models to pull (default: all).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Download again even if present.")] = False,
) -> None:
    """Fetch, join and verify the default model pair into the cache directory."""
    for name in names or list(models.NAMED_MODELS):
        if name not in models.NAMED_MODELS:
            raise AdaspecError(f"unknown model {name!r}; known: {', '.join(models.NAMED_MODELS)}")
        models.pull(models.NAMED_MODELS[name], force=force, say=err.print)


@models_app.command("list")
@user_errors
def models_list() -> None:
    """Show the named models and whether they are pulled."""
    table = Table("name", "role", "size (MB)", "status", "path")
    for spec, path in models.pulled_models():
        status = "pulled" if path else "not pulled"
        table.add_row(spec.name, spec.role, f"{spec.size / 1e6:.0f}", status, str(path or "-"))
    Console().print(table)
    err.print(f"cache directory: {models.cache_dir()}")


if __name__ == "__main__":
    app()
