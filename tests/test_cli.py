"""The CLI as a user meets it: JSON and streamed output, and one-line errors for mistakes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from adaspec.cli import app

runner = CliRunner()


def run(*args: str, env: dict | None = None):
    return runner.invoke(app, list(args), env=env)


def generate_json(model_dir, *extra: str) -> dict:
    result = run("generate", "def reverse(head):", "--target", str(model_dir), "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_generate_json_has_text_ids_and_stats(model_dir):
    out = generate_json(model_dir, "--drafter", "none", "--max-new-tokens", "12")
    assert set(out) >= {"text", "token_ids", "stats"}
    expected_stats = {"new_tokens", "target_forwards", "drafted", "accepted", "mean_accepted"}
    expected_stats |= {"acceptance_rate", "draft_s", "verify_s", "wall_s", "tokens_per_s"}
    assert expected_stats <= set(out["stats"])
    assert len(out["token_ids"]) == out["stats"]["new_tokens"] <= 12
    assert out["stats"]["mean_accepted"] == 1.0


def test_every_drafter_gives_the_same_ids(model_dir, draft_dir):
    base = generate_json(model_dir, "--drafter", "none", "--max-new-tokens", "24")["token_ids"]
    for extra in (
        ["--drafter", "ngram"],
        ["--drafter", "model", "--draft", str(draft_dir), "--policy", "fixed", "--k", "3"],
        ["--drafter", "model", "--draft", str(draft_dir), "--policy", "confidence"],
        ["--drafter", "model", "--draft", str(model_dir), "--policy", "heuristic", "--chat"],
    ):
        got = generate_json(model_dir, *extra, "--max-new-tokens", "24")
        if "--chat" in extra:
            assert got["stats"]["acceptance_rate"] == 1.0  # target drafting for itself
            continue
        assert got["token_ids"] == base, extra


def test_sampling_with_seed_is_reproducible(model_dir):
    """With a policy that does not time itself; goodput's draft sizes follow measured costs,
    and under sampling a different draft size draws different random numbers."""
    args = ["--temperature", "0.8", "--top-p", "0.9", "--top-k", "20", "--seed", "7"]
    args += ["--max-new-tokens", "20", "--drafter", "ngram", "--policy", "heuristic"]
    first = generate_json(model_dir, *args)
    assert generate_json(model_dir, *args)["token_ids"] == first["token_ids"]


def test_streamed_output_then_one_stats_line(model_dir):
    result = run("generate", "hello", "--target", str(model_dir), "--max-new-tokens", "10")
    assert result.exit_code == 0, result.output
    assert "tok/s" in result.stderr and "mean accepted" in result.stderr


@pytest.fixture
def bad_gguf(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"not a gguf at all")
    return path


@pytest.fixture
def corrupt_cache(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    return tmp_path


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_missing_model(tmp_path):
    result = run("generate", "hi", "--target", str(tmp_path / "nope.gguf"))
    assert_one_line_error(result, "not found")


def test_not_a_gguf_file(bad_gguf):
    assert_one_line_error(run("generate", "hi", "--target", str(bad_gguf)), "not a GGUF file")


def test_folder_without_config(tmp_path):
    assert_one_line_error(run("generate", "hi", "--target", str(tmp_path)), "config.json")


def test_corrupt_named_model(corrupt_cache):
    result = run("generate", "hi", env={"ADASPEC_CACHE": str(corrupt_cache)})
    assert_one_line_error(result, "corrupt", "models pull")


def test_named_model_not_pulled(tmp_path):
    result = run("generate", "hi", env={"ADASPEC_CACHE": str(tmp_path)})
    assert_one_line_error(result, "not pulled", "adaspec models pull")


def test_vocabulary_mismatch(model_dir, foreign_dir):
    result = run(
        "generate",
        "hi",
        "--target",
        str(model_dir),
        "--draft",
        str(foreign_dir),
        "--drafter",
        "model",
    )
    assert_one_line_error(result, "different vocabulary")


def test_model_drafter_without_draft(model_dir):
    result = run("generate", "hi", "--target", str(model_dir), "--drafter", "model")
    assert_one_line_error(result, "needs a draft model")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["", "--drafter", "none"], "empty"),
        (["   ", "--drafter", "none"], "empty"),
        (["hi", "--max-new-tokens", "500"], "context"),
        (["hi", "--temperature", "-1"], "temperature"),
        (["hi", "--top-p", "0"], "top-p"),
        (["hi", "--top-p", "1.5"], "top-p"),
        (["hi", "--top-k", "-2"], "top-k"),
        (["hi", "--k", "0"], "k (draft length)"),
        (["hi", "--max-new-tokens", "0"], "max-new-tokens"),
        (["hi", "--policy", "magic"], "unknown policy"),
        (["hi", "--drafter", "magic"], "unknown drafter"),
        (["hi", "--backend", "magic"], "unknown backend"),
        (["hi", "--dtype", "int3"], "dtype"),
        (["hi", "--threads", "0"], "--threads"),
        (["hi", "--context", "100000"], "exceeds the model's own context"),
    ],
)
def test_bad_values(model_dir, args, fragment):
    prompt, *rest = args
    assert_one_line_error(run("generate", prompt, "--target", str(model_dir), *rest), fragment)


def test_a_prompt_on_stdin_that_is_not_utf8(model_dir):
    result = runner.invoke(app, ["generate", "-", "--target", str(model_dir)], input=b"\xff\xfe")
    assert_one_line_error(result, "not valid UTF-8")


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and result.stdout.startswith("adaspec ")


def test_help_lists_every_registered_drafter_and_policy():
    from adaspec.drafters import DRAFTERS
    from adaspec.policies import POLICIES

    text = " ".join(run("generate", "--help").stdout.split())
    for name in [*DRAFTERS.names(), *POLICIES.names()]:
        assert name in text


def test_models_list(tmp_path):
    result = run("models", "list", env={"ADASPEC_CACHE": str(tmp_path)})
    assert result.exit_code == 0
    assert "qwen2.5-coder-1.5b" in result.stdout and "not pulled" in result.stdout


def test_models_pull_unknown_name(tmp_path):
    result = run("models", "pull", "gpt-5", env={"ADASPEC_CACHE": str(tmp_path)})
    assert_one_line_error(result, "unknown model")


def test_profile_prints_and_saves(model_dir, tmp_path):
    result = run(
        "profile",
        "--target",
        str(model_dir),
        "--ks",
        "1,2",
        "--contexts",
        "4,8",
        "--repeats",
        "1",
        env={"ADASPEC_CACHE": str(tmp_path)},
    )
    assert result.exit_code == 0, result.output
    assert "k=2" in result.stdout
    saved = list((tmp_path / "profiles").glob("*.json"))
    assert len(saved) == 1


def test_profile_bad_list(model_dir):
    assert_one_line_error(
        run("profile", "--target", str(model_dir), "--ks", "1,x"), "whole numbers"
    )


def test_drafters_that_can_use_a_model_get_the_default_pairs_draft():
    from adaspec.build import EngineSpec, draft_to_load
    from adaspec.models import DEFAULT_DRAFT

    def draft(**fields):
        return draft_to_load(EngineSpec(**fields), target=None)  # type: ignore[arg-type]

    assert draft(drafter="model") == DEFAULT_DRAFT
    assert draft(drafter="ngram") is None  # drafts without a model
    assert draft(drafter="model", draft="none") is None  # opted out
    assert draft(target="/models/other", drafter="model") is None  # no pair known
    assert draft(target="/models/other", draft="/models/small") == "/models/small"
