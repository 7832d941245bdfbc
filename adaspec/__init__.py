"""adaspec: adaptive, lossless speculative decoding.

from adaspec import load
engine = load()                      # default pair: Qwen2.5-Coder 1.5B + 0.5B draft
result = engine.generate("Reverse a linked list in Python.", chat=True, max_new_tokens=64)
print(result.text)
"""

from adaspec.api import load, load_backend
from adaspec.config import GenerationConfig, SamplingParams
from adaspec.engine import Engine, Generation, GenerationResult
from adaspec.errors import AdaspecError, ConfigError, ModelError

__all__ = [
    "AdaspecError",
    "ConfigError",
    "Engine",
    "Generation",
    "GenerationConfig",
    "GenerationResult",
    "ModelError",
    "SamplingParams",
    "load",
    "load_backend",
]
__version__ = "0.1.0"
