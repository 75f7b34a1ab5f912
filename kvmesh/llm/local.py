"""LocalLM: one in-process Hugging Face causal LM that many agents share, and `load_model` to get it.

`load_model(spec)` accepts an alias (see `kvmesh models`), a local model folder or a Hugging Face id, and
returns the same `LocalLM` for the same spec for the life of the process.

Everything a caller needs goes through token ids the model really reads: `render` gives the exact prompt
text, `encode_prompt` its ids, `new_batch` a running batch (`kvmesh.llm.engine`) that every model call goes
through, and `generate` a convenience that runs prompts to completion on one (at most `max_batch_size` rows
decode at once, rows grouped by length so padding stays small) with per-row token counts and timings.
`LocalLM` implements `kvmesh.llm.base.KVModel`: the KV channels may read and write its caches.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import torch

from kvmesh.llm import onednn as onednn_module
from kvmesh.llm.base import Generation, GenerationRequest, normalize_stop, run_requests
from kvmesh.llm.chat import ChatFormat, to_turns
from kvmesh.llm.engine import BatchDecoder, DecodeBatch
from kvmesh.llm.registry import ALIASES, ModelNotAvailableError, resolve, unknown_alias_message

_HF_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class LocalLM:
    """A causal LM and its tokenizer, in this process.

    Args:
        model: a transformers causal LM, already on its device and in eval mode.
        tokenizer: its tokenizer.
        spec: the name it was loaded under (alias, folder or Hugging Face id).
        max_batch_size: rows per forward pass; larger calls are split into chunks.
    """

    def __init__(self, model, tokenizer, spec: str, max_batch_size: int = 32) -> None:
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.spec = spec
        self.max_batch_size = max_batch_size
        self.chat = ChatFormat.for_tokenizer(tokenizer)
        self.eos_ids = self._eos_ids()
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids)
        self._decoder = BatchDecoder(model, tokenizer, self.eos_ids, self.pad_id)
        self._control = set(tokenizer.added_tokens_decoder)  # ids a tokenizer matches in text before its vocabulary

    def __repr__(self) -> str:
        return f"LocalLM({self.spec!r}, device={self.device}, dtype={self.model.dtype})"

    @property
    def name(self) -> str:
        return self.spec

    @property
    def context_length(self) -> int | None:
        """Positions the model reads, prompt and reply together (its config's `max_position_embeddings`)."""
        return self._decoder.context_length

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(source)
        if not ids:
            raise ModelNotAvailableError(f"{self.spec}: the tokenizer and generation config name no EOS token")
        return ids

    # --- text <-> tokens -------------------------------------------------------------------------------------

    def render(self, messages: Sequence) -> str:
        """The exact prompt text for a transcript, ready for a new assistant turn."""
        return self.chat.render(messages, add_generation_prompt=True)

    def encode_transcript(self, messages: Sequence) -> tuple[str, list[int]]:
        """A transcript's exact prompt text and its ids, every message's content read as text: a control token
        it spells (`<|im_end|>`) stays text, and only the template's own markup is markup."""
        text, data, at = self.render(messages), [], 0
        for turn in to_turns(messages):
            start = text.find(turn["content"], at) if turn["content"] else -1
            if start >= 0:  # contents appear in order, also when a strict template merged turns
                data.append((start, start + len(turn["content"])))
                at = start + len(turn["content"])
        return text, self.encode_with_spans(text, data)[0]

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a rendered prompt; its special tokens (BOS included) are written in the text itself."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, text: str) -> int:
        """Number of tokens of `text` in this model's tokenizer (no special tokens added)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_with_spans(
        self, text: str, literal: Sequence[tuple[int, int]] = ()
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """`encode_prompt(text)` and the character span of each token, from one tokenizer call.

        `literal`: character ranges that are data. A control token found inside one (a task that spells
        `<|im_end|>`) means the text is encoded again range by range, with the data ranges' control tokens
        split into plain text; prompts without any keep the ids of one tokenizer call."""
        ids, spans = self._encode(text)
        if not literal or not any(
            self._inside(span, literal) for token, span in zip(ids, spans, strict=True) if token in self._control
        ):
            return ids, spans
        ids, spans, cuts = [], [], sorted({0, len(text), *(i for span in literal for i in span)})
        for lo, hi in pairwise(cuts):
            part_ids, part_spans = self._encode(text[lo:hi], split_special=self._inside((lo, hi), literal))
            ids += part_ids
            spans += [(lo + a, lo + b) for a, b in part_spans]
        return ids, spans

    def _encode(self, text: str, split_special: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
        encoded = self.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=split_special
        )
        return encoded["input_ids"], [tuple(span) for span in encoded["offset_mapping"]]

    @staticmethod
    def _inside(span: tuple[int, int], ranges: Sequence[tuple[int, int]]) -> bool:
        return any(lo <= span[0] and span[1] <= hi for lo, hi in ranges)

    def decode(self, token_ids: Sequence[int]) -> str:
        """The text `token_ids` stand for, special tokens included (the inverse of `encode_prompt`)."""
        return self.tokenizer.decode(token_ids)

    # --- model calls -----------------------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[str | Sequence],
        max_new_tokens: int | Sequence[int] = 256,
        temperature: float | Sequence[float] = 0.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> list[Generation]:
        """Generate for several prompts in one batched call.

        Args:
            prompts: rendered prompt strings (read as written, control tokens included), or transcripts (lists of
                messages) to render first, whose contents are read as text (`encode_transcript`).
            max_new_tokens, temperature: one value for all rows or one per row.
            stop: stop strings for every row (the plain chat layout adds its own).
            seed: seeds sampling; greedy rows ignore it.
        """
        if isinstance(prompts, str) or (prompts and not isinstance(prompts[0], str | list | tuple)):
            raise TypeError(
                "prompts must be a list of prompt strings or of transcripts, e.g. generate([text]) or "
                "generate([[message, ...]]); got a single prompt or a bare transcript"
            )
        encoded = [(p, self.encode_prompt(p)) if isinstance(p, str) else self.encode_transcript(p) for p in prompts]
        count = len(encoded)
        limits = [max_new_tokens] * count if isinstance(max_new_tokens, int) else list(max_new_tokens)
        temps = [float(temperature)] * count if isinstance(temperature, int | float) else list(temperature)
        if len(limits) != count or len(temps) != count:
            raise ValueError("max_new_tokens and temperature need one value per prompt, or a single value")
        if any(limit < 1 for limit in limits):  # prefill-only rows are for caches: GenerationRequest(..., 0)
            raise ValueError(f"max_new_tokens must be >= 1, got {min(limits)}")
        stops = normalize_stop(stop) + self.chat.stop
        requests = [
            GenerationRequest(ids, limit, temp, stops)
            for (_, ids), limit, temp in zip(encoded, limits, temps, strict=True)
        ]
        return self.generate_requests(requests, seed=seed)

    def generate_requests(self, requests: Sequence[GenerationRequest], seed: int | None = None) -> list[Generation]:
        """Run prepared requests to completion; at most `max_batch_size` rows decode at once, and a waiting
        row takes the slot of the first row to finish."""
        return run_requests(self, requests, seed)

    def new_batch(self, seed: int | None = None) -> DecodeBatch:
        """A running batch on this model that callers feed with `submit` and drive with `step`."""
        return DecodeBatch(self._decoder, self.max_batch_size, seed)

    @property
    def busy_s(self) -> float:
        """Seconds this model has spent in its generation engine (prefill, decode, cache work) so far."""
        return self._decoder.busy_s


# --- loading ---------------------------------------------------------------------------------------------------

_LOADED: dict[tuple, LocalLM] = {}
WEIGHT_FILES = ("*.safetensors", "*.bin")


def weights_stamp(spec: str) -> tuple:
    """A model folder's weight files as (name, size, mtime_ns): weights saved over a folder (a fine-tune written
    where its base was) change the stamp, so `load_model` loads them instead of serving the old copy."""
    path = Path(spec)
    if not path.is_dir():
        return ()
    files = sorted(f for pattern in WEIGHT_FILES for f in path.glob(pattern))
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)


_LOCK = threading.Lock()


def _pick_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def locate_model(spec: str) -> str:
    """Map a spec to something `from_pretrained` accepts, with a clear error if there is nothing to load."""
    if spec in ALIASES:
        return str(resolve(spec))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(f"folder {path} has no config.json, so it is not a Hugging Face model folder")
        return str(path)
    if path.exists():
        raise ModelNotAvailableError(f"{path} is a file; pass the model folder that holds config.json")
    if _HF_ID.match(spec):
        return spec
    raise ModelNotAvailableError(unknown_alias_message(spec))


def load_model(
    spec: str = "smollm2-135m", device: str | None = None, dtype: str | None = None, onednn: bool | None = None
) -> LocalLM:
    """Load (once per process) the model named by `spec`: an alias, a local folder or a Hugging Face id. A folder
    whose weight files changed since it was loaded (trained weights saved over it) is loaded again.

    Args:
        spec: `smollm2-135m` (default), `gemma3-270m`, `tiny-random`, a folder, or `org/name`.
        device: `cpu`, `cuda`, `cuda:1`, ... or None/`auto` for the GPU when there is one.
        dtype: torch dtype name; default float32 on CPU and bfloat16 on GPU.
        onednn: run fp32 CPU linear layers through oneDNN (default on; see kvmesh.llm.onednn).
    """
    if isinstance(spec, LocalLM):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ModelNotAvailableError(f"a model spec must be a non-empty string, got {spec!r}")
    target = _pick_device(device)
    dtype = dtype or ("float32" if target.type == "cpu" else "bfloat16")
    if not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ModelNotAvailableError(f"dtype {dtype!r} is not a torch dtype name; use e.g. float32 or bfloat16")
    if spec not in ALIASES and Path(spec).expanduser().is_dir():
        spec = str(Path(spec).expanduser().resolve())  # one model per folder, however the path is spelled
    fast_linear = onednn_module.wanted(onednn) and onednn_module.available(target, getattr(torch, dtype))
    key = (spec, str(target), dtype, fast_linear, weights_stamp(spec))
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
        source = locate_model(spec)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype)).to(target)
        except OSError as error:
            raise ModelNotAvailableError(
                f"could not load {spec!r}: {error}\nWithout network access, download the model elsewhere "
                f"and pass its local folder instead."
            ) from error
        if fast_linear:
            onednn_module.enable(model)
        lm = LocalLM(model, tokenizer, spec)
        _LOADED[key] = lm
        return lm
