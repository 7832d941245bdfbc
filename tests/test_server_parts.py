"""The server's pure parts, without a model: stop strings, request schemas, response
shapes, API keys."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from starlette.datastructures import Headers

from adaspec.server.guards import presented_key
from adaspec.server.responses import Frame, chunk, speculation, usage_chunk
from adaspec.server.schemas import ChatCompletionRequest, CompletionRequest
from adaspec.server.stops import StopText, held_suffix
from adaspec.stats import GenerationStats, StepOutcome


@pytest.mark.parametrize(
    ("text", "stops", "held"),
    [
        ("hello", ["lo!"], 2),  # "lo" could start "lo!"
        ("hello", ["xyz"], 0),
        ("hello", ["o", "llo?"], 3),  # a full "o" is a match, not held; "llo" is held
        ("ab", ["abc", "b"], 2),
        ("", ["abc"], 0),
    ],
)
def test_held_suffix_is_the_longest_start_of_a_stop(text, stops, held):
    assert held_suffix(text, stops) == held


@pytest.mark.parametrize(
    ("pieces", "stops", "out", "stopped"),
    [
        (["Hello wor", "ld"], ["world"], ["Hello ", ""], True),
        (["Hel", "lo", " there"], ["lo!"], ["He", "l", "lo there"], False),
        (["a<", "/s", ">b"], ["</s>"], ["a", "", ""], True),
        (["stop at once"], ["at", "stop"], [""], True),  # the earliest of several
        (["x", "y"], [], ["x", "y"], False),
        (["xab", "xabc", "d"], ["abc"], ["x", "abx", ""], True),
    ],
)
def test_stop_text_hands_out_nothing_of_a_stop_string(pieces, stops, out, stopped):
    text = StopText(stops)
    assert [text.push(p) for p in pieces] == out
    assert text.stopped is stopped


def test_stop_text_flush_gives_back_a_prefix_that_never_completed():
    text = StopText(["world"])
    assert text.push("hello wor") == "hello "
    assert text.flush() == "wor"
    assert text.push("more") == "more"  # flushed: nothing left held


def test_stop_text_after_a_stop_gives_nothing():
    text = StopText(["."])
    assert text.push("a. b") == "a"
    assert text.push("more") == ""
    assert text.flush() == ""


def test_chat_request_parameters():
    body = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "max_completion_tokens": 7,
            "max_tokens": 9,
            "temperature": 0.5,
            "top_k": 3,
            "stop": "x",
            "user": "ignored",  # an OpenAI field adaspec has no use for
        }
    )
    assert body.chat() == [{"role": "user", "content": "hi"}]
    assert body.token_limit() == 7  # max_completion_tokens wins, as in OpenAI's API
    config = body.config(7)
    assert (config.max_new_tokens, config.sampling.temperature, config.sampling.top_k) == (
        7,
        0.5,
        3,
    )
    assert body.stops() == ["x"]


@pytest.mark.parametrize(
    "change",
    [
        {"messages": []},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"max_tokens": 0},
        {"temperature": 2.5},
        {"top_p": 0},
        {"n": 2},
        {"stop": ["s"] * 17},
    ],
)
def test_chat_request_refusals(change):
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate(
            {"messages": [{"role": "user", "content": "x"}]} | change
        )


def test_completion_prompt_forms():
    assert CompletionRequest.model_validate({"prompt": "a"}).prompt == "a"
    assert CompletionRequest.model_validate({"prompt": ["a"]}).prompt == ["a"]
    assert CompletionRequest.model_validate({"prompt": [1, 2]}).prompt == [1, 2]
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"prompt": ["a", "b"]})  # one prompt per request


def test_chunks_share_one_frame():
    frame = Frame("chat", "m")
    first, last = chunk(frame, "", role=True), chunk(frame, None, "stop")
    assert first["id"] == last["id"] and first["id"].startswith("chatcmpl-")
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert last["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    text = chunk(Frame("text", "m"), "abc")
    assert text["object"] == "text_completion" and text["choices"][0]["text"] == "abc"


def test_speculation_counts_by_drafter():
    stats = GenerationStats(prompt_tokens=3)
    stats.record(StepOutcome(drafted=4, accepted=3, emitted=4, draft_s=0, verify_s=0, drafter="a"))
    stats.record(StepOutcome(drafted=2, accepted=0, emitted=1, draft_s=0, verify_s=0, drafter="b"))
    stats.record(StepOutcome(drafted=0, accepted=0, emitted=1, draft_s=0, verify_s=0))
    out = speculation(stats)
    assert (out["drafted"], out["accepted"], out["target_forwards"]) == (6, 3, 3)
    assert out["drafters"] == {
        "a": {"drafted": 4, "accepted": 3},
        "b": {"drafted": 2, "accepted": 0},
    }
    assert out["mean_accepted"] == 2.0


def test_usage_chunk_has_no_choices():
    from adaspec.server.generation import Outcome

    outcome = Outcome("stop", 5, 3, 2, GenerationStats())
    last = usage_chunk(Frame("chat", "m"), outcome)
    assert last["choices"] == []
    assert last["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 3,
        "total_tokens": 8,
        "prompt_tokens_details": {"cached_tokens": 2},
    }


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ({"Authorization": "Bearer k1"}, "k1"),
        ({"authorization": "bearer  k1 "}, "k1"),
        ({"X-Api-Key": "k2"}, "k2"),
        ({"Authorization": "Basic abc"}, None),
        ({}, None),
    ],
)
def test_presented_key(headers, key):
    assert presented_key(Headers(headers)) == key
