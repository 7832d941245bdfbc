"""Hugging Face causal LMs in PyTorch, on CPU or CUDA, from a model folder or a GGUF file.

GGUF files are de-quantized by transformers' GGUF loader, which is slow; the result is
saved once as safetensors under the cache directory so that every later load is a plain,
fast ``from_pretrained``.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from time import perf_counter

import torch
from safetensors.torch import save_model
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedModel
from transformers.utils import logging as hf_logging

from adaspec.backends.base import BACKENDS, SlotRows
from adaspec.backends.context import context_size
from adaspec.backends.early_exit import ExitRun, decoder_parts, exit_run
from adaspec.backends.gqa_attention import use_gqa_sdpa
from adaspec.backends.layout_timing import place_weights
from adaspec.errors import ModelError
from adaspec.models import cache_dir, check_gguf_file
from adaspec.tree import PendingNodes, TokenTree

log = logging.getLogger(__name__)  # the CLI shows adaspec's INFO lines on stderr


class HFTokenizer:
    """Adapts a transformers tokenizer to the Tokenizer protocol."""

    def __init__(self, tokenizer) -> None:
        self._tok = tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=True))

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def apply_chat(self, messages: list[dict[str, str]]) -> list[int]:
        if not self._tok.chat_template:
            raise ModelError("this model has no chat template; drop --chat and give raw text")
        text = self._tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(self._tok.encode(text, add_special_tokens=False))

    def vocabulary(self) -> list[str]:
        by_id = sorted(self._tok.get_vocab().items(), key=lambda item: item[1])
        return [token for token, _ in by_id]

    @property
    def eos_token_id(self) -> int | None:
        return self._tok.eos_token_id


@BACKENDS.register("torch")
class TorchBackend:
    """One causal LM with a DynamicCache per slot that grows by ``forward`` and shrinks by
    ``rollback``. This object is slot 0; ``slot(i)`` is the same model on cache i. Several
    slots' rows are scored in one forward (``forward_slots``; docs/serving.md)."""

    name = "torch"
    prefill_invariant_from: int | None = None  # fp32 matmul rounds by the rows in a batch

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: HFTokenizer | None = None,
        label: str = "model",
        slots: int = 1,
    ) -> None:
        self.model = model.eval()
        use_gqa_sdpa(model)
        self.max_context: int | None = None  # --context, below the model's own
        self.tokenizer = tokenizer
        self.label = label
        self.slots = slots
        self.device = next(model.parameters()).device
        # Counted before any packing: a packed layer's weight is no longer a parameter.
        self.weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        self._views: dict[int, TorchBackend] = {0: self}
        self._open_cache()

    def _open_cache(self) -> None:
        """This object's own fields: what one slot holds."""
        self._cache = DynamicCache(config=self.model.config)
        self._pending = PendingNodes()  # the last forward's nodes, until commit

    def slot(self, index: int) -> TorchBackend:
        """The view on cache ``index`` (made on first use, then the same object)."""
        view = self._views.get(index)
        if view is None:
            if not 0 <= index < self.slots:
                raise ModelError(f"slot {index} does not exist: this backend has {self.slots}")
            view = copy.copy(self)  # shares the model and the views
            view._open_cache()
            self._views[index] = view
        return view

    @torch.inference_mode()
    def forward_slots(self, rows: Sequence[SlotRows]) -> list[torch.Tensor]:
        """Several slots' rows in one forward over one flat cache: the slots' cached keys
        and values side by side, each row attending to its own slot's and to its own
        ancestors only (a 4-D mask), positioned by its slot's length and its depth. The
        weights are read once for every request's rows; the new keys and values go back to
        each slot's cache."""
        views = [self.slot(slot) for slot, _, _ in rows]
        trees = [TokenTree.of(tokens, parents) for _, tokens, parents in rows]
        pasts = [view.length for view in views]
        flat = _flat_cache(self.model.config, [view._cache for view in views])
        mask, positions = _slots_mask(trees, pasts, next(self.model.parameters()).dtype)
        ids = [token for tree in trees for token in tree.tokens]
        out = self.model(
            input_ids=torch.tensor([ids], dtype=torch.long, device=self.device),
            attention_mask=mask[None, None].to(self.device),  # [1, 1, rows, past + rows]
            position_ids=positions[None].to(self.device),  # [1, rows]
            cache=flat,
            use_cache=True,
        )
        sizes = [len(tree) for tree in trees]
        for index, layer in enumerate(flat.layers):
            keys = layer.keys[..., sum(pasts) :, :].split(sizes, dim=-2)  # [1, heads, n, dim]
            values = layer.values[..., sum(pasts) :, :].split(sizes, dim=-2)
            for view, key, value in zip(views, keys, values, strict=True):
                view._cache.update(key, value, index)
        for view, tree, past in zip(views, trees, pasts, strict=True):
            view._pending = PendingNodes.of(past, tree.tokens, tree.parents)
        return list(out.logits[0].split(sizes))  # [n, vocab] each

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str | None = None,
        dtype: str | None = None,
        threads: int | None = None,
        drafting: bool = False,
        context: int | None = None,
        slots: int = 1,
    ) -> TorchBackend:
        """A backend for a model folder or a ``.gguf`` file (converted once, then cached).
        On a CPU in fp32 its linear layers take the weight layout this machine runs fastest
        (timed once, see layout_timing). A model loaded for ``drafting`` runs one row at a
        time (and its prompt once), so it keeps one copy of each weight, the faster for one
        row: two would double its memory for nothing; on a CPU with bf16 instructions it
        runs in bf16 (see _dtype)."""
        if threads:
            torch.set_num_threads(threads)  # process-wide: torch has no per-model threads
        hf_logging.disable_progress_bar()  # the CLI shows its own status; keep stderr clean
        hf_logging.set_verbosity_error()
        path = Path(path)
        device = device or default_device()
        torch_dtype = _dtype(dtype, device, drafting)
        folder = hf_folder(path)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype).to(device)
        tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(folder))
        backend = cls(model, tokenizer, label=str(path), slots=slots)
        place_weights(backend, drafting)  # fp32 on CPU only: verifying k rows costs ~one
        _detach_from_file(model)
        if context is not None:  # the cache grows as it goes: nothing to reserve
            backend.max_context = context_size(context, backend.context_length, 1)
        return backend

    @property
    def threads(self) -> int:
        return torch.get_num_threads()

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().out_features)

    @property
    def context_length(self) -> int:
        own = int(getattr(self.model.config, "max_position_embeddings", 2048))
        return min(own, self.max_context) if self.max_context else own

    @property
    def eos_token_ids(self) -> frozenset[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return frozenset(ids)

    @property
    def length(self) -> int:
        return self._cache.get_seq_length()

    def reset(self) -> None:
        self._open_cache()

    @torch.inference_mode()
    def prefill(self, tokens: Sequence[int]) -> None:
        if tokens:
            self._run(tokens, logits_to_keep=1)

    @torch.inference_mode()
    def score_prompt(self, tokens: Sequence[int]) -> torch.Tensor:
        return self._run(tokens, logits_to_keep=1)[0, -1]  # [vocab]

    @torch.inference_mode()
    def forward(self, tokens: Sequence[int], parents: Sequence[int] | None = None) -> torch.Tensor:
        self._pending = PendingNodes.of(self.length, tokens, parents)
        if self._pending.tree is None:
            return self._run(tokens, logits_to_keep=0)[0]  # [k, vocab]
        return self._forward_tree(self._pending.tree)

    @torch.inference_mode()
    def forward_hidden(self, tokens: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._call(tokens, logits_to_keep=0, output_hidden_states=True)
        return out.logits[0], out.hidden_states[-1][0]  # [k, vocab], [k, hidden] (after norm)

    def _forward_tree(self, tree: TokenTree) -> torch.Tensor:
        """Row i [n, vocab] scores the token after node i, each node attending to the cached
        text and its own ancestors only (a 4-D mask; positions by depth)."""
        past, n = self.length, len(tree)
        seen = torch.ones(n, past + n, dtype=torch.bool)
        seen[:, past:] = tree.ancestor_mask()
        dtype = next(self.model.parameters()).dtype
        mask = torch.zeros(seen.shape, dtype=dtype).masked_fill(~seen, torch.finfo(dtype).min)
        positions = torch.tensor([[past + d - 1 for d in tree.depths]], device=self.device)
        out = self.model(
            input_ids=torch.tensor([list(tree.tokens)], dtype=torch.long, device=self.device),
            attention_mask=mask[None, None].to(self.device),  # [1, 1, n, past + n]
            position_ids=positions,  # [1, n]
            cache=self._cache,
            use_cache=True,
        )
        return out.logits[0]  # [n, vocab]

    @property
    def exit_layers(self) -> int:
        """Decoder layers an early exit may stop after (0: this model's layout is not the
        Llama family's, so it cannot exit early)."""
        inner = decoder_parts(self.model)
        return 0 if inner is None else len(inner.layers)

    def early_exit(self, layer: int) -> AbstractContextManager[ExitRun]:
        """The first ``layer`` layers, on this slot's cache (early_exit.EarlyExit)."""
        return exit_run(self.model, self._cache, layer)

    def commit(self, path: Sequence[int]) -> None:
        start = self._pending.start
        if self._pending.tree is None:  # a chain: the path is a prefix of it
            self.rollback(start + len(path))
            return
        keep = torch.tensor([*range(start), *(start + i for i in path)], device=self.device)
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(-2, keep)  # [batch, heads, seq, head_dim]
            layer.values = layer.values.index_select(-2, keep)

    def rollback(self, length: int) -> None:
        if length < self.length:
            self._cache.crop(length - self.length)  # transformers 5: negative = drop that many

    def _run(self, tokens: Sequence[int], logits_to_keep: int) -> torch.Tensor:
        return self._call(tokens, logits_to_keep).logits  # [1, k or 1, vocab]

    def _call(self, tokens: Sequence[int], logits_to_keep: int, **options):
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=self.device)  # [1, k]
        return self.model(
            input_ids=ids,
            cache=self._cache,
            use_cache=True,
            logits_to_keep=logits_to_keep,
            **options,
        )


def _flat_cache(config, caches: Sequence[DynamicCache]) -> DynamicCache:
    """One cache holding every given cache's keys and values, one after the other."""
    flat = DynamicCache(config=config)
    for index, layers in enumerate(zip(*(cache.layers for cache in caches), strict=True)):
        keys = torch.cat([layer.keys for layer in layers], dim=-2)  # [1, heads, past, dim]
        values = torch.cat([layer.values for layer in layers], dim=-2)
        flat.update(keys, values, index)
    return flat


def _slots_mask(
    trees: Sequence[TokenTree], pasts: Sequence[int], dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The additive mask [rows, past + rows] and positions [rows] of several slots' nodes
    over their flat cache: a row sees its own slot's cached text and its own ancestors."""
    past, rows = sum(pasts), sum(len(tree) for tree in trees)
    seen = torch.zeros(rows, past + rows, dtype=torch.bool)
    positions: list[int] = []
    column = row = 0
    for tree, length in zip(trees, pasts, strict=True):
        n = len(tree)
        seen[row : row + n, column : column + length] = True
        seen[row : row + n, past + row : past + row + n] = tree.ancestor_mask()
        positions += [length + depth - 1 for depth in tree.depths]
        column, row = column + length, row + n
    mask = torch.zeros(seen.shape, dtype=dtype).masked_fill(~seen, torch.finfo(dtype).min)
    return mask, torch.tensor(positions)


def _detach_from_file(model: PreTrainedModel) -> None:
    """Copy the weights still read from the memory-mapped safetensors file into the
    process's own memory. The packed layers hold copies already; the embedding and norms
    would keep the whole file mapped and counted as resident (6 GB for the 1.5B target
    beside its 6 GB of packed copies)."""
    if next(model.parameters()).device.type != "cpu":
        return
    with torch.no_grad():
        for param in model.parameters():
            param.data = param.data.clone()
        for buffer in model.buffers():
            buffer.data = buffer.data.clone()


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype(name: str | None, device: str, drafting: bool = False) -> torch.dtype:
    """fp32 unless asked otherwise, on every device, because it keeps greedy speculation exact;
    a draft model on a CPU that computes bf16 in hardware runs in bf16.

    bf16 and fp16 GPU kernels are not batch-invariant: scoring k tokens in one forward rounds
    differently from k one-token steps, so at near-ties greedy speculation can pick another
    token than plain decoding; a small model's step is bound by kernel launches, so fp32
    costs little there. A draft model's rounding never reaches the output (the target
    verifies every token it drafts), only its cost does, and where the CPU multiplies bf16
    in hardware bf16 is the faster; elsewhere torch emulates it. Measurements:
    docs/exactness.md.
    """
    if name is None:
        fast_bf16 = drafting and device == "cpu" and cpu_has_bf16()
        return torch.bfloat16 if fast_bf16 else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            name
        ]
    except KeyError:
        raise ModelError(f"unknown dtype {name!r}; use float32, bfloat16 or float16") from None


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16, or AMX tiles)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, hence getattr
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def _check_folder(path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise ModelError(
            f"{path} is neither a .gguf file nor a Hugging Face model folder (no config.json)"
        )
    return path


def hf_folder(path: Path) -> Path:
    """The Hugging Face folder to load: a GGUF file's converted copy, or the folder itself."""
    return converted_gguf_folder(path) if path.suffix == ".gguf" else _check_folder(path)


def converted_gguf_folder(gguf: Path) -> Path:
    """The safetensors copy of a GGUF model, made on first use (fp32, lossless)."""
    check_gguf_file(gguf)
    folder = cache_dir() / "converted" / f"{gguf.stem}-{_fingerprint(gguf)}"
    if (folder / "config.json").is_file():
        return folder
    log.info("converting %s to fp32 for torch, once (minutes on a CPU)", gguf.name)
    started = perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    partial = folder.with_name(folder.name + ".partial")
    _save_dequantized(model, partial)
    tokenizer.save_pretrained(partial)
    partial.rename(folder)
    log.info("converted %s in %.0f s: %s", gguf.name, perf_counter() - started, folder)
    return folder


def _save_dequantized(model: PreTrainedModel, folder: Path) -> None:
    """save_pretrained refuses GGUF-loaded models; their weights are plain fp32 tensors by
    now, so write them directly and drop the GGUF marker from the config."""
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"))


def _fingerprint(path: Path, chunk: int = 1 << 22) -> str:
    """Content key without hashing a whole GB: size plus the first and last 4 MiB."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as f:
        digest.update(f.read(chunk))
        f.seek(max(0, path.stat().st_size - chunk))
        digest.update(f.read(chunk))
    return digest.hexdigest()[:16]
