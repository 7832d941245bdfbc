"""Request bodies of the OpenAI-compatible endpoints, validated by pydantic.

Fields OpenAI defines that adaspec does not use (``user``, penalties, ``logit_bias``...)
are accepted and ignored, as clients send them by default; values adaspec cannot honour
(``n`` above 1, out-of-range sampling) are refused with a message naming the field.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from adaspec.config import GenerationConfig, SamplingParams

Role = Literal["system", "user", "assistant"]


class TextPart(BaseModel):
    """One part of a message's content; only text parts exist for a text-only model."""

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Role
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class GenerationRequest(BaseModel):
    """The parameters both endpoints share."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None  # an extension; 0 = off
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None  # one choice per request
    stream: bool = False
    stream_options: StreamOptions | None = None
    speculate: bool = True  # an extension; false: plain decoding, the same text greedily

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 16:
            raise ValueError("at most 16 stop strings")
        return stop

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        if n is not None and n != 1:
            raise ValueError("only n=1 is served: send several requests for several choices")
        return n

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def token_limit(self) -> int | None:
        return self.max_tokens

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def config(self, max_new_tokens: int) -> GenerationConfig:
        """The engine's config; sampling is greedy unless a temperature above 0 is given."""
        sampling = SamplingParams(
            temperature=self.temperature or 0.0,
            top_k=self.top_k or 0,
            top_p=1.0 if self.top_p is None else self.top_p,
        )
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            seed=self.seed,
            speculate=self.speculate,
        )


class ChatCompletionRequest(GenerationRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def chat(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(GenerationRequest):
    # Text, one text in a list, or token ids; several prompts per request are not served.
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] | list[int]
