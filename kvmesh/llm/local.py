"""LocalLM: one in-process Hugging Face causal LM that many agents share, and `load_model` to get it.

`load_model(spec)` accepts an alias (see `kvmesh models`), a local model folder or a Hugging Face id, and
returns the same `LocalLM` for the same spec for the life of the process. A spec that starts with a backend's
scheme (`openai:http://HOST:PORT/v1#MODEL`) goes to that backend instead (`BACKENDS`, a `kvmesh.plugins.Registry`
of `factory(spec) -> LanguageModel`: kvmesh's `openai`, other packages' `kvmesh.backends` entry points), once
per spec too; `device`, `dtype` and `onednn` apply to in-process models only.

Everything a caller needs goes through token ids the model really reads: `render` gives the exact prompt
text, `encode_prompt` its ids, `new_batch` a running batch (`kvmesh.llm.engine`) that every model call goes
through, and `generate` a convenience that runs prompts to completion on one (at most `max_batch_size` rows
decode at once, rows grouped by length so padding stays small) with per-row token counts and timings.
`LocalLM` implements `kvmesh.llm.base.KVModel`: the KV channels may read and write its caches.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import torch

from kvmesh.llm import onednn as onednn_module
from kvmesh.llm.base import SERVER_SCHEME, LanguageModel
from kvmesh.llm.engine import LocalRunningBatch
from kvmesh.llm.registry import ALIASES, ModelNotAvailableError, locate_model
from kvmesh.llm.runner import ModelRunner
from kvmesh.llm.tokenized import TokenizedModel
from kvmesh.plugins import Registry


class LocalLM(TokenizedModel):
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
        super().__init__(tokenizer, spec)
        self.model = model.eval()
        self.max_batch_size = max_batch_size
        self.eos_ids = self._eos_ids()
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids)
        self._runner = ModelRunner(model, tokenizer, self.eos_ids, self.pad_id)

    def __repr__(self) -> str:
        return f"LocalLM({self.spec!r}, device={self.device}, dtype={self.model.dtype})"

    @property
    def context_length(self) -> int | None:
        """Positions the model reads, prompt and reply together (its config's `max_position_embeddings`)."""
        return self._runner.context_length

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

    def new_batch(self, seed: int | None = None) -> LocalRunningBatch:
        """A running batch on this model that callers feed with `submit` and drive with `step`."""
        return LocalRunningBatch(self._runner, self.max_batch_size, seed)

    @property
    def busy_s(self) -> float:
        """Seconds this model has spent in its generation engine (prefill, decode, cache work) so far."""
        return self._runner.busy_s


# --- loading ---------------------------------------------------------------------------------------------------

_LOADED: dict[tuple, LocalLM] = {}
_FROM_BACKENDS: dict[str, LanguageModel] = {}  # specs with a backend's scheme: one model (a client) per spec

# scheme -> factory(spec) -> LanguageModel, for specs "scheme:..."; other specs load in this process
BACKENDS: Registry[Callable[[str], LanguageModel]] = Registry(
    "backend",
    "kvmesh.backends",
    {SERVER_SCHEME.removesuffix(":"): "kvmesh.llm.remote:load_remote"},  # its client's packages load only when used
    error=ModelNotAvailableError,
    adder="kvmesh.llm.local.BACKENDS.register(scheme, factory)",
)
WEIGHT_FILES = ("*.safetensors", "*.bin")


def weights_stamp(spec: str) -> tuple:
    """A model folder's weight files as (name, size, mtime_ns): weights saved over a folder (a fine-tune written
    where its base was) change the stamp, so `load_model` loads them instead of serving the old copy."""
    path = Path(spec)
    if not path.is_dir():
        return ()
    files = sorted(f for pattern in WEIGHT_FILES for f in path.glob(pattern))
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)


_LOCK = threading.RLock()  # re-entrant: a backend may load an in-process model while its own loads


def _pick_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def backend_scheme(spec: str) -> str | None:
    """The backend `spec` names by its scheme (`openai` for `openai:http://...`), or None: an in-process model."""
    scheme, colon, _ = spec.partition(":")
    return scheme if colon and scheme in BACKENDS else None


def _load_from_backend(scheme: str, spec: str) -> LanguageModel:
    with _LOCK:
        if spec not in _FROM_BACKENDS:
            _FROM_BACKENDS[spec] = BACKENDS.get(scheme, f"model {spec!r}")(spec)
        return _FROM_BACKENDS[spec]


def load_model(
    spec: str = "smollm2-135m", device: str | None = None, dtype: str | None = None, onednn: bool | None = None
) -> LanguageModel:
    """Load (once per process) the model named by `spec`: an alias, a local folder or a Hugging Face id. A folder
    whose weight files changed since it was loaded (trained weights saved over it) is loaded again. A spec with
    a backend's scheme goes to that backend (`BACKENDS`): a server spec, `openai:http://HOST:PORT/v1#MODEL`,
    gives a client of that server (`kvmesh.llm.remote.OpenAIModel`).

    Args:
        spec: `smollm2-135m` (default), `gemma3-270m`, `tiny-random`, a folder, `org/name`, or `scheme:...`.
        device: `cpu`, `cuda`, `cuda:1`, ... or None/`auto` for the GPU when there is one.
        dtype: torch dtype name; default float32 on CPU and bfloat16 on GPU.
        onednn: run fp32 CPU linear layers through oneDNN (default on; see kvmesh.llm.onednn).
    """
    if isinstance(spec, TokenizedModel):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ModelNotAvailableError(f"a model spec must be a non-empty string, got {spec!r}")
    scheme = backend_scheme(spec)
    if scheme is not None:
        return _load_from_backend(scheme, spec)
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
