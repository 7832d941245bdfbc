"""llama.cpp through llama-cpp-python's low-level C API (llama_batch, llama_decode, memory).

The high-level ``Llama`` class re-evaluates or copies more than speculation needs. Here a
forward over k tokens is one ``llama_decode`` of a reused batch; its logits are returned as
a zero-copy NumPy/torch view of llama.cpp's buffer (valid until the next decode of this
backend), and a rollback is one ``llama_memory_seq_rm`` of the rejected positions.
"""

from __future__ import annotations

import copy
import ctypes
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import llama_cpp as lc
import numpy as np
import torch
from transformers.utils.chat_template_utils import render_jinja_template

from adaspec.backends.base import BACKENDS, SlotRows
from adaspec.backends.context import context_size
from adaspec.errors import ModelError
from adaspec.models import check_gguf_file
from adaspec.tree import PendingNodes, TokenTree, common_prefix

# Largest batch that ggml's CPU kernels score bit-identically to one-token decoding (a build
# without llamafile, weights not repacked); from 8 tokens on a different kernel rounds
# differently. Verification forwards are split into batches of at most this size, which
# costs little on a CPU, where a forward's cost grows almost linearly with its tokens.
EXACT_BATCH = 7
# Batches of this many tokens or more take the other kernel, whose rows round alike at any
# batch size: a prompt prefilled in such pieces, however split, caches the same keys and
# values bit for bit (tests/test_integration.py), so a slot's cached prompt can be reused.
PREFILL_INVARIANT = EXACT_BATCH + 1


def even_pieces(n: int, most: int) -> list[tuple[int, int]]:
    """[start, end) of the fewest pieces of at most ``most`` tokens covering n, of equal
    size (within one): none is smaller than half of ``most`` when there are several, so a
    prompt of PREFILL_INVARIANT tokens or more never ends in a small piece."""
    count = max(1, -(-n // most))
    ends = [n * (i + 1) // count for i in range(count)]
    return list(zip([0, *ends[:-1]], ends, strict=True))


def batch_invariant_build() -> bool:
    """Whether this llama.cpp scores a batch exactly as one token at a time. llamafile's
    tinyBLAS kernels (used from two tokens up) round differently, and quantized activations
    amplify that into visibly different logits, so such a build cannot promise greedy
    speculative output equal to plain decoding."""
    return b"LLAMAFILE = 1" not in lc.llama_print_system_info()


def require_batch_invariant_build() -> None:
    if not batch_invariant_build():
        raise SystemExit(
            "llama-cpp-python was built with LLAMAFILE; rebuild it with "
            'CMAKE_ARGS="-DGGML_LLAMAFILE=OFF" (`make install` does)'
        )


@lc.llama_log_callback
def _quiet(level, text, user_data) -> None:
    """llama.cpp logs every load to stderr; adaspec reports through its own CLI instead."""


class _ModelHandle:
    """Owns the loaded model; the backend and its tokenizer both hold it, so the weights and
    vocabulary live as long as either one is in use."""

    def __init__(self, path: Path) -> None:
        self.ptr = lc.llama_model_load_from_file(str(path).encode(), _model_params())
        if not self.ptr:
            raise ModelError(f"llama.cpp could not load {path}; is it a complete GGUF model?")
        self.vocab = lc.llama_model_get_vocab(self.ptr)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = lc.llama_model_n_ctx_train(self.ptr)

    @property
    def kv_bytes_per_token(self) -> int:
        """An f16 key and value per layer and KV head."""
        head_dim = lc.llama_model_n_embd(self.ptr) // lc.llama_model_n_head(self.ptr)
        kv_heads = lc.llama_model_n_head_kv(self.ptr)
        return lc.llama_model_n_layer(self.ptr) * 2 * kv_heads * head_dim * 2

    def __del__(self) -> None:
        if getattr(self, "ptr", None):
            lc.llama_model_free(self.ptr)


class LlamaTokenizer:
    """The Tokenizer protocol on llama.cpp's vocabulary and the model file's chat template."""

    def __init__(self, model: _ModelHandle) -> None:
        self._model = model  # keeps the vocabulary alive
        self._vocab = model.vocab
        self._n_vocab = model.n_vocab
        template = lc.llama_model_chat_template(model.ptr, None)
        self._template = template.decode() if template else None
        self._words: list[str] | None = None

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """Special-token text is parsed as the token, as Hugging Face tokenizers do."""
        data = text.encode()
        room = len(data) + 8
        buffer = (lc.llama_token * room)()
        n = lc.llama_tokenize(self._vocab, data, len(data), buffer, room, add_special, True)
        if n < 0:
            raise ModelError(f"could not tokenize a {len(data)}-byte prompt")
        return list(buffer[:n])

    def decode(self, ids: Sequence[int]) -> str:
        buffer = ctypes.create_string_buffer(256)
        pieces = []
        for token in ids:
            n = lc.llama_token_to_piece(self._vocab, token, buffer, 256, 0, False)
            pieces.append(buffer.raw[: max(n, 0)])
        return b"".join(pieces).decode("utf-8", errors="replace")

    def apply_chat(self, messages: list[dict[str, str]]) -> list[int]:
        if not self._template:
            raise ModelError("this model has no chat template; drop --chat and give raw text")
        rendered, _ = render_jinja_template(
            [messages], chat_template=self._template, add_generation_prompt=True
        )
        return self.encode(rendered[0], add_special=False)

    def vocabulary(self) -> list[str]:
        if self._words is None:
            self._words = [
                lc.llama_vocab_get_text(self._vocab, i).decode("utf-8", errors="replace")
                for i in range(self._n_vocab)
            ]
        return self._words


class _ContextHandle:
    """Owns the llama.cpp context and the reused batch: every slot's view holds it, and
    the last one gone frees them."""

    def __init__(self, model: _ModelHandle, params, n_batch: int, path: Path) -> None:
        self.ctx = lc.llama_init_from_model(model.ptr, params)
        if not self.ctx:
            raise ModelError(
                f"llama.cpp could not create a {params.n_ctx}-token context for {path}"
            )
        self.batch = lc.llama_batch_init(n_batch, 0, 1)
        self.memory = lc.llama_get_memory(self.ctx)

    def __del__(self) -> None:
        if getattr(self, "batch", None) is not None:
            lc.llama_batch_free(self.batch)
        if getattr(self, "ctx", None):
            lc.llama_free(self.ctx)  # the model handle is released after, by refcount


@BACKENDS.register("llama.cpp")
class LlamaCppBackend:
    """A GGUF model in llama.cpp: one context, one KV-cache sequence per slot, each in a
    KV stream of its own (``kv_unified`` off), so a slot's rows never share cache cells
    with another slot's: scored together they round as they would alone. This object is
    slot 0; ``slot(i)`` is the same model and context on sequence i."""

    name = "llama.cpp"
    prefill_invariant_from: int | None = PREFILL_INVARIANT

    def __init__(
        self,
        path: Path,
        context: int | None = None,
        threads: int | None = None,
        n_batch: int = 512,
        slots: int = 1,
    ) -> None:
        check_gguf_file(path)
        lc.llama_log_set(_quiet, ctypes.c_void_p())
        lc.llama_backend_init()
        self.label = str(path)
        self.threads = threads or os.cpu_count() or 1
        if not batch_invariant_build():
            warnings.warn(
                "llama-cpp-python was built with LLAMAFILE: greedy speculative output can differ "
                "from plain decoding; rebuild with "
                'CMAKE_ARGS="-DGGML_LLAMAFILE=OFF" (see README)',
                stacklevel=2,
            )
        self._model = _ModelHandle(path)
        per_slot = context_size(
            context, self._model.n_ctx_train, self._model.kv_bytes_per_token * slots
        )
        params = self._context_params(per_slot * slots, n_batch, slots)
        self._handle = _ContextHandle(self._model, params, n_batch, path)
        self._ctx, self._batch = self._handle.ctx, self._handle.batch
        self._memory = self._handle.memory
        self._slots = slots
        self._n_vocab = self._model.n_vocab
        vocab = self._model.vocab
        self._eos = frozenset(i for i in range(self._n_vocab) if lc.llama_vocab_is_eog(vocab, i))
        self.tokenizer = LlamaTokenizer(self._model)
        self._n_batch = n_batch
        self._views: dict[int, LlamaCppBackend] = {0: self}
        self._open_sequence(0)

    def _open_sequence(self, seq: int) -> None:
        """This object's own fields: what one slot's sequence holds."""
        self._seq = seq
        self._length = 0
        self._embeddings = False
        self._pending = PendingNodes()  # the last forward's nodes, until commit

    @property
    def slots(self) -> int:
        return self._slots

    def slot(self, index: int) -> LlamaCppBackend:
        """The view on sequence ``index`` (made on first use, then the same object)."""
        view = self._views.get(index)
        if view is None:
            if not 0 <= index < self._slots:
                raise ModelError(f"slot {index} does not exist: this context has {self._slots}")
            view = copy.copy(self)  # shares the model, context, batch and views
            view._open_sequence(index)
            self._views[index] = view
        return view

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str | None = None,
        dtype: str | None = None,
        drafting: bool = False,
        **options,
    ) -> LlamaCppBackend:
        """``device`` and ``dtype`` are torch notions; llama.cpp runs the file as quantized.
        ``drafting`` changes nothing here: llama.cpp's layout suits one row and many."""
        return cls(Path(path), **options)

    def _context_params(self, n_ctx: int, n_batch: int, slots: int):
        params = lc.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_seq_max = slots
        params.kv_unified = False  # a KV stream per sequence: see the class docstring
        params.n_batch = params.n_ubatch = n_batch
        params.n_threads = params.n_threads_batch = self.threads
        # No flash attention: on an Intel Xeon (Sapphire Rapids) ggml's CPU flash attention
        # scores row 0 of a 2-token batch 0.57 apart in the logits from the same token decoded
        # alone once the cache holds a few hundred tokens, which changed greedy output on a
        # Spec-Bench rag question. Plain attention is bit-identical there (and it only cost
        # about 5% of prefill speed on an AMD EPYC). Tested: tests/test_integration.py.
        params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        return params

    @property
    def vocab_size(self) -> int:
        return self._n_vocab

    @property
    def weight_bytes(self) -> int:
        return int(lc.llama_model_size(self._model.ptr))

    @property
    def context_length(self) -> int:
        """Per slot: the context is shared out evenly among the sequences."""
        return lc.llama_n_ctx(self._ctx) // self._slots

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos

    @property
    def length(self) -> int:
        return self._length

    def reset(self) -> None:
        lc.llama_memory_seq_rm(self._memory, self._seq, 0, -1)
        self._length = 0

    def prefill(self, tokens: Sequence[int]) -> None:
        for start, end in even_pieces(len(tokens), self._n_batch):
            self._decode(tokens[start:end], scored_from=end - start)

    def score_prompt(self, tokens: Sequence[int]) -> torch.Tensor:
        """Decoded in pieces of equal size (none under PREFILL_INVARIANT tokens where the
        prompt has that many), the last one scoring its last row."""
        pieces = even_pieces(len(tokens), self._n_batch)
        for start, end in pieces[:-1]:
            self._decode(tokens[start:end], scored_from=end - start)
        start, end = pieces[-1]
        self._decode(tokens[start:end], scored_from=end - start - 1)
        return torch.from_numpy(self._logits(1)[0].copy())  # [vocab], outlives the buffer

    def forward(self, tokens: Sequence[int], parents: Sequence[int] | None = None) -> torch.Tensor:
        """[k, vocab] logits. A chain of up to EXACT_BATCH tokens is a view of llama.cpp's
        buffer, valid until the next call; longer ones are decoded in exact-size pieces and
        copied. A tree is scored path by path (``_forward_tree``)."""
        self._pending = PendingNodes.of(self._length, tokens, parents)
        if self._pending.tree is not None:
            return torch.from_numpy(self._forward_tree(self._pending.tree))
        if len(tokens) <= EXACT_BATCH:
            self._decode(tokens)
            return torch.from_numpy(self._logits(len(tokens)))
        return torch.from_numpy(self._score_in_pieces(tokens, hidden=False)[0])

    def forward_slots(self, rows: Sequence[SlotRows]) -> list[torch.Tensor]:
        """Each slot's rows [k, vocab], as ``forward`` on its view returns them. Several
        slots' chains share llama_decodes of at most EXACT_BATCH tokens in all (llama.cpp
        splits one into as few passes as its KV streams allow); a tree is scored on its
        own slot, path by path."""
        out: list[torch.Tensor] = []
        pending: list[tuple[LlamaCppBackend, int, int, np.ndarray]] = []  # view, i, token, rows
        for slot, tokens, parents in rows:
            view = self.slot(slot)
            nodes = PendingNodes.of(view._length, tokens, parents)
            if nodes.tree is not None:
                out.append(view.forward(tokens, parents))
                continue
            view._pending = nodes
            logits = np.empty((len(tokens), self._n_vocab), dtype=np.float32)  # [k, vocab]
            pending += [(view, i, token, logits) for i, token in enumerate(tokens)]
            out.append(torch.from_numpy(logits))
        for start in range(0, len(pending), EXACT_BATCH):
            self._decode_mixed(pending[start : start + EXACT_BATCH])
        return out

    def _decode_mixed(self, piece: Sequence[tuple[LlamaCppBackend, int, int, np.ndarray]]) -> None:
        """One llama_decode of chain tokens from several sequences, each scored; token i of
        a view's chain goes at the view's chain start + i."""
        self._run_batch(
            [(view._seq, view._pending.start + i, token, True) for view, i, token, _ in piece]
        )
        for j, (view, i, _, logits) in enumerate(piece):
            row = lc.llama_get_logits_ith(self._ctx, j)
            logits[i] = np.ctypeslib.as_array(row, (self._n_vocab,))
            view._length = view._pending.start + i + 1

    def _forward_tree(self, tree: TokenTree) -> np.ndarray:
        """Each root path decoded in this one sequence, depth first: a path's nodes after
        the part it shares with the path before it, each node once. Every row is then
        exactly what one-token decoding of its path gives. Nodes of several paths in one
        batch would be cheaper, but in a unified KV cache only the first path's rows come
        out bit-identical (their cells interleave), and split KV streams cost a copy of the
        whole context per step; on a CPU, where a forward costs about its rows, one batch
        saves little. The likeliest path is decoded last: committing it is a rollback."""
        rows = np.empty((len(tree), self._n_vocab), dtype=np.float32)  # [n, vocab]
        held: list[int] = []  # nodes after the cached text, in cache order
        for path in tree.dfs_paths():
            shared = common_prefix(held, path)
            self.rollback(self._pending.start + shared)
            new = path[shared:]
            rows[new] = self._score_in_pieces([tree.tokens[i] for i in new], hidden=False)[0]
            held = path
        self._pending.held = held
        return rows

    def commit(self, path: Sequence[int]) -> None:
        pending = self._pending
        if pending.tree is None:  # a chain: the path is a prefix of it
            self.rollback(pending.start + len(path))
            return
        shared = common_prefix(pending.held, path)
        self.rollback(pending.start + shared)
        missing = [pending.tree.tokens[i] for i in path[shared:]]
        for piece in range(0, len(missing), EXACT_BATCH):  # sizes that cache exactly
            self._decode(missing[piece : piece + EXACT_BATCH], scored_from=EXACT_BATCH)
        self._pending = PendingNodes(self._length)

    def forward_hidden(self, tokens: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Like ``forward``, with llama.cpp's output embeddings (the final normed hidden
        state) switched on for this context from the first call."""
        if not self._embeddings:
            lc.llama_set_embeddings(self._ctx, True)
            self._embeddings = True
        logits, hidden = self._score_in_pieces(tokens, hidden=True)
        assert hidden is not None
        return torch.from_numpy(logits), torch.from_numpy(hidden)

    def _score_in_pieces(
        self, tokens: Sequence[int], hidden: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Decode in pieces of at most EXACT_BATCH tokens; copy out each piece's logits
        [k, vocab] and, if asked, its output embeddings [k, hidden]."""
        width = lc.llama_model_n_embd(self._model.ptr)
        logits = np.empty((len(tokens), self._n_vocab), dtype=np.float32)
        states = np.empty((len(tokens), width), dtype=np.float32) if hidden else None
        for start in range(0, len(tokens), EXACT_BATCH):
            piece = tokens[start : start + EXACT_BATCH]
            rows = slice(start, start + len(piece))
            self._decode(piece)
            logits[rows] = self._logits(len(piece))
            if states is not None:
                embeddings = lc.llama_get_embeddings(self._ctx)
                states[rows] = np.ctypeslib.as_array(embeddings, (len(piece), width))
        return logits, states

    def _logits(self, n: int) -> np.ndarray:
        return np.ctypeslib.as_array(lc.llama_get_logits(self._ctx), (n, self._n_vocab))

    def rollback(self, length: int) -> None:
        if length < self._length:
            lc.llama_memory_seq_rm(self._memory, self._seq, length, -1)
            self._length = length

    def _decode(self, tokens: Sequence[int], scored_from: int = 0) -> None:
        """One llama_decode of this slot's tokens; from index ``scored_from`` on each gets
        a row of logits."""
        at = self._length
        self._run_batch([(self._seq, at + i, t, i >= scored_from) for i, t in enumerate(tokens)])
        self._length += len(tokens)

    def _run_batch(self, entries: Sequence[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (sequence, position, token, scored) entries."""
        batch = self._batch
        batch.n_tokens = len(entries)
        for j, (seq, pos, token, scored) in enumerate(entries):
            batch.token[j] = token
            batch.pos[j] = pos
            batch.n_seq_id[j] = 1
            batch.seq_id[j][0] = seq
            batch.logits[j] = scored
        status = lc.llama_decode(self._ctx, batch)
        if status != 0:
            raise ModelError(
                f"llama_decode failed (status {status}) at position {entries[0][1]}: "
                "the context is full or out of memory; lower --max-new-tokens"
            )


def _model_params():
    params = lc.llama_model_default_params()
    # No repacked weight layouts: their batched GEMM rounds differently from the one-token
    # GEMV, so a verified draft token would not score exactly as it does when decoded alone.
    params.use_extra_bufts = False
    return params
