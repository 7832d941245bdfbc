"""Peers: the same model run by the libraries users would pick instead of adaspec.

A peer whose library is missing is skipped with a note; nothing is ever simulated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from unittest import mock

import torch

from adaspec.bench.methods import PeerGroup, TimedPeer


def llama_cpp_peers(
    model: Path, threads: int, n_ctx: int, lookup: tuple[int, ...] = (10,)
) -> tuple[list[PeerGroup], list[str]]:
    """llama-cpp-python's own ``create_completion``, plain and with its prompt-lookup draft
    (``LlamaPromptLookupDecoding``'s default of 10 tokens); each loads its own model."""
    try:
        from llama_cpp import Llama
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
    except ImportError:
        return [], ["llama-cpp-python peers skipped: llama-cpp-python is not installed"]

    def make(draft):
        with _without_repacked_weights():
            llm = Llama(
                str(model),
                n_ctx=n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                draft_model=draft,
                logits_all=draft is not None,  # its speculative path keeps all positions' scores
                verbose=False,
            )

        def generate(prompt: list[int], max_new: int) -> int:
            llm.reset()
            out = llm.create_completion(prompt, max_tokens=max_new, temperature=0.0, top_k=1)
            return int(out["usage"]["completion_tokens"])

        return generate

    def group(name: str, draft_of: Callable[[], object | None]) -> PeerGroup:
        return PeerGroup([name], lambda: [TimedPeer(name, make(draft_of()))])

    groups = [group("llama-cpp-python", lambda: None)]
    for n in lookup:
        draft = partial(LlamaPromptLookupDecoding, num_pred_tokens=n)
        groups.append(group(f"llama-cpp-python:lookup{n}", draft))
    return groups, []


@contextmanager
def _without_repacked_weights() -> Iterator[None]:
    """Load with the weight layout adaspec's llama.cpp backend uses (``use_extra_bufts`` off),
    which ``Llama()`` has no argument for. With repacked layouts, llama.cpp 0.3.36 built without
    llamafile dies of a segmentation fault in its first decode on an Intel Xeon (Sapphire
    Rapids) with AMX. Without them, the peers run the same ggml kernels as adaspec."""
    import llama_cpp.llama_cpp as lc

    default = lc.llama_model_default_params

    def params():
        chosen = default()
        chosen.use_extra_bufts = False
        return chosen

    with mock.patch.object(lc, "llama_model_default_params", params):
        yield


def transformers_peers(
    target_folder: Path,
    draft: Path | torch.nn.Module | None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    lookup: int = 10,
) -> tuple[list[PeerGroup], list[str]]:
    """Hugging Face ``generate()``: plain, ``assistant_model=``, ``prompt_lookup_num_tokens=``,
    sharing one loaded target.

    They run on adaspec's device and dtype: a peer on another device measures the hardware,
    not the method. ``draft`` is a folder, or the draft model adaspec already holds (loaded
    as transformers loads it): the same weights are not held twice."""
    # name -> its generate() options, given the loaded draft model
    variants: dict[str, Callable[[torch.nn.Module | None], dict]] = {"transformers": lambda _: {}}
    if draft is not None:
        variants["transformers:assisted"] = lambda model: {"assistant_model": model}
    variants[f"transformers:lookup{lookup}"] = lambda _: {"prompt_lookup_num_tokens": lookup}
    notes = [] if draft is not None else ["transformers:assisted skipped: no draft model"]
    load = partial(_transformers_group, target_folder, draft, device, dtype, variants)
    return [PeerGroup(list(variants), load)], notes


def _transformers_group(
    target_folder: Path,
    draft: Path | torch.nn.Module | None,
    device: torch.device | str,
    dtype: torch.dtype | None,
    variants: dict[str, Callable[[torch.nn.Module | None], dict]],
) -> list[TimedPeer]:
    from transformers import AutoModelForCausalLM

    def load(folder: Path):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32)
        return model.to(device).eval()

    target = load(target_folder)
    if isinstance(draft, Path):
        draft = load(draft)

    def make(**options):
        @torch.inference_mode()
        def generate(prompt: list[int], max_new: int) -> int:
            ids = torch.tensor([prompt], device=device)
            out = target.generate(ids, max_new_tokens=max_new, do_sample=False, **options)
            return int(out.shape[1] - ids.shape[1])

        return generate

    return [TimedPeer(name, make(**options(draft))) for name, options in variants.items()]
