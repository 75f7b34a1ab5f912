"""LoRA adapters on a shared base model: many adapters loaded at once, chosen per row inside one forward pass.

A team may give each agent its own LoRA adapter (the folder peft's `save_pretrained` writes: adapter_config.json
and adapter_model.safetensors). All adapters of one base model are injected into that one model, each under its
own name, with peft's `inject_adapter_in_model`: the model stays its transformers class (kvmesh reads its config,
layers and rotary embedding directly) and is never wrapped in a `PeftModel`. A forward pass then names one
adapter per row: peft's LoRA layers take an `adapter_names` list (one name per row of the batch, "__base__" for
the base weights) and add each row's LoRA delta on its own sub-batch, so rows with different adapters share
the base model's matrix multiplications. `AdapterSet.selecting(names)` hands that list to every LoRA layer
through forward pre-hooks installed once, as `PeftModel` does per call.

Outside a selection every LoRA layer has no active adapter, so rows of a model that has adapters loaded but
that name none get exactly the base output (at the cost of one wrapper call per adapted layer); a model that
never loaded an adapter has no LoRA layers at all.

Staleness: an adapter is its resolved folder plus a fingerprint of its two files (size, mtime, ctime and inode,
and a BLAKE2 hash of their bytes). A file whose timestamps are younger than `SETTLE_S` at the last check is
hashed again on every use, since a rewrite within the filesystem's timestamp granularity keeps its stat; older
files are trusted on an unchanged stat. When the files changed (a training iteration saved over them) the next
row that names the folder loads the new weights under a new name; rows already decoding keep the version they
started with, and a superseded version is deleted once no row uses it (`release`).

Errors are `AdapterError`s that say what is wrong and how to fix it: a missing folder or file, an adapter made
for another base model (the base named in its config, when both names are known models, and the shapes of its
tensors against the model's modules), an unsupported kind (DoRA, extra saved modules), and `peft` not installed.

Caveats: only LoRA on linear and embedding layers; DoRA and `modules_to_save` are refused (peft's mixed batches
do not support them). The selection is per model, not per thread: one thread runs a model's forward passes.
Rows of a batch abandoned mid-way never release their adapter, so its superseded version stays loaded. The
oneDNN path (`kvmesh.llm.onednn`) stays on the base layer inside each LoRA layer; the small A and B matrices run
through plain `F.linear`. KV channels share caches between the agents of one model whatever their adapters, so
the scheduler refuses them in a team with adapters.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from kvmesh.llm.registry import ALIASES

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
SETTLE_S = 2.0  # coarser than any common filesystem's timestamp granularity
_INSTALL = "pip install 'kvmesh[train]' (or pip install peft)"
_KEY = re.compile(r"(?:base_model\.model\.)?(?P<module>.+)\.(?P<part>lora_(?:embedding_)?[AB])(?:\.weight|\.bias)?")


def names_per_row(adapters: Sequence[str | None]) -> list[str] | None:
    """One adapter name per row of a forward pass (BASE for none), or None when no row has one (the plain path)."""
    return None if all(name is None for name in adapters) else [name or BASE for name in adapters]


class AdapterError(ValueError):
    """An adapter that cannot be used with this model; the message says what is wrong and how to fix it."""


def require_peft():
    """The peft module, or an `AdapterError` saying how to install it."""
    try:
        import peft
    except ImportError as error:
        raise AdapterError(f"LoRA adapters need the `peft` package, which is not installed: {_INSTALL}") from error
    return peft


def adapter_folder(path: str | Path) -> Path:
    """The resolved adapter folder, checked to hold both files peft writes."""
    folder = Path(path).expanduser().resolve()
    fix = f"pass the folder peft's save_pretrained wrote (it holds {CONFIG} and {WEIGHTS})"
    if not folder.exists():
        raise AdapterError(f"adapter folder {folder} does not exist; {fix}")
    if not folder.is_dir():
        raise AdapterError(f"adapter {folder} is a file, not a folder; {fix}")
    missing = [name for name in (CONFIG, WEIGHTS) if not (folder / name).is_file()]
    if missing:
        hint = " (save it with safe_serialization=True, the default)" if (folder / "adapter_model.bin").exists() else ""
        raise AdapterError(f"adapter folder {folder} lacks {' and '.join(missing)}{hint}; {fix}")
    return folder


def alias_of(name: str | None) -> str | None:
    """The kvmesh alias a model name or folder stands for (`smollm2-135m`, or its converted folder), else None."""
    if not name:
        return None
    if name in ALIASES:
        return name
    base = Path(name).name
    return next((alias for alias in ALIASES if re.fullmatch(rf"{re.escape(alias)}-r\d+", base)), None)


def _stat(folder: Path) -> tuple:
    stats = [(folder / name).stat() for name in (CONFIG, WEIGHTS)]
    return tuple((s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino) for s in stats)


def _read(folder: Path) -> tuple[str, bytes]:
    """A hash of both files and the weights' bytes, read once: what is loaded is what was hashed."""
    digest, weights = hashlib.blake2b((folder / CONFIG).read_bytes(), digest_size=16), (folder / WEIGHTS).read_bytes()
    digest.update(weights)
    return digest.hexdigest(), weights


@dataclass
class _Version:
    """One loaded version of an adapter folder."""

    name: str  # its adapter name inside the model
    stat: tuple
    digest: str
    checked_ns: int  # wall time of the last hash

    def settled(self) -> bool:
        newest = max(max(mtime, ctime) for _, mtime, ctime, _ in self.stat)
        return self.checked_ns > newest + int(SETTLE_S * 1e9)


class AdapterSet:
    """The adapters loaded onto one model, by folder; get it with `adapters_of(model)`."""

    def __init__(self, model: torch.nn.Module, label: str) -> None:
        self.model = model
        self.label = label  # the model's name in messages
        self.current: dict[Path, _Version] = {}
        self.users: Counter[str] = Counter()  # rows decoding with each adapter name
        self.retired: set[str] = set()  # superseded versions, deleted when their last row leaves
        self.names: list[str] | None = None  # the selection of the forward pass running now
        self._hooked: set[int] = set()
        self._count = 0
        self._lock = threading.Lock()

    def load(self, path: str | Path) -> str:
        """The adapter name of the folder's current files, loading them if they are new or changed."""
        folder = adapter_folder(path)
        with self._lock:
            version = self.current.get(folder)
            stat = _stat(folder)
            if version is not None and stat == version.stat and version.settled():
                return version.name
            digest, weights = _read(folder)
            if version is not None and digest == version.digest:
                version.stat, version.checked_ns = stat, time.time_ns()
                return version.name
            self._count += 1
            name = f"kvmesh{self._count}"
            self._inject(folder, name, weights)
            self.current[folder] = _Version(name, stat, digest, time.time_ns())
            if version is not None:
                self.retired.add(version.name)
                self._collect(version.name)
            return name

    def acquire(self, paths: Sequence[str | None]) -> list[str | None]:
        """Adapter names for rows joining a batch (None: base), each folder checked once; `release` them later."""
        names = {path: self.load(path) for path in dict.fromkeys(paths) if path is not None}
        chosen = [names[path] if path is not None else None for path in paths]
        self.users.update(name for name in chosen if name is not None)
        return chosen

    def release(self, name: str | None) -> None:
        """A row that used adapter `name` left its batch."""
        if name is not None:
            self.users[name] -= 1
            self._collect(name)

    def _collect(self, name: str) -> None:
        if name in self.retired and self.users[name] <= 0:
            self.retired.discard(name)
            self._discard(name)

    @contextlib.contextmanager
    def selecting(self, names: list[str]) -> Iterator[None]:
        """Run forward passes with one adapter name per row (BASE for the base weights)."""
        self.names = names
        try:
            yield
        finally:
            self.names = None

    def _pre_hook(self, module, args, kwargs):
        if self.names is None:
            return None
        return args, {**kwargs, "adapter_names": self.names}

    def _lora_layers(self) -> list:
        from peft.tuners.lora import LoraLayer

        return [module for module in self.model.modules() if isinstance(module, LoraLayer)]

    def _discard(self, name: str) -> None:
        for layer in self._lora_layers():
            layer.delete_adapter(name)
        getattr(self.model, "peft_config", {}).pop(name, None)

    def _inject(self, folder: Path, name: str, weights: bytes) -> None:
        require_peft()
        from peft import PeftConfig, inject_adapter_in_model, set_peft_model_state_dict
        from safetensors.torch import load

        try:
            config = PeftConfig.from_pretrained(str(folder))
        except (ValueError, TypeError, KeyError) as error:  # malformed JSON or unknown fields
            raise AdapterError(f"adapter {folder}'s {CONFIG} does not read as a peft config: {error}") from error
        self._check_config(folder, config)
        tensors = load(weights)
        self._check_shapes(folder, config, tensors)
        config.inference_mode = True
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "multiple adapters in the model": that is the point
                inject_adapter_in_model(config, self.model, adapter_name=name)
                loaded = set_peft_model_state_dict(self.model, tensors, adapter_name=name)
            unfilled = [key for key in loaded.missing_keys if f".{name}." in key]
            if unfilled:
                raise AdapterError(
                    f"adapter {folder}'s {WEIGHTS} lacks {len(unfilled)} tensors its config targets (e.g. "
                    f"{unfilled[0]}); save the adapter again with peft's save_pretrained"
                )
        except AdapterError:
            self._discard(name)
            raise
        except (ValueError, RuntimeError) as error:
            self._discard(name)
            raise AdapterError(f"adapter {folder} does not fit model {self.label!r}: {error}") from error
        for layer in self._lora_layers():
            layer.set_adapter([])  # no adapter outside a selection: rows that name none read the base weights
            if id(layer) not in self._hooked:
                layer.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
                self._hooked.add(id(layer))
        self.model.train(self.model.training)  # new LoRA modules take the model's mode (eval: no dropout)

    def _check_config(self, folder: Path, config) -> None:
        kind = getattr(config.peft_type, "value", config.peft_type)
        if kind != "LORA":
            raise AdapterError(f"adapter {folder} is a {kind} adapter; kvmesh loads LoRA adapters only")
        if getattr(config, "use_dora", False) or getattr(config, "modules_to_save", None):
            raise AdapterError(
                f"adapter {folder} uses DoRA or modules_to_save, which peft cannot mix per row in one batch; "
                "train a plain LoRA adapter (use_dora=False, no modules_to_save)"
            )
        base = config.base_model_name_or_path
        ours = alias_of(getattr(self.model.config, "_name_or_path", None)) or alias_of(self.label)
        theirs = alias_of(base)
        if theirs is not None and ours is not None and theirs != ours:
            raise AdapterError(
                f"adapter {folder} was trained on {theirs} ({base}), not on {ours} (model {self.label!r}); give it "
                f"to an agent whose model is {theirs!r}, or train an adapter on {ours!r}"
            )

    def _check_shapes(self, folder: Path, config, tensors: dict[str, torch.Tensor]) -> None:
        """Refuse tensors for modules this model lacks or of other shapes, naming both models."""
        modules = dict(self.model.named_modules())
        lacking, wrong = [], []
        for key, tensor in tensors.items():
            match = _KEY.fullmatch(key)
            if match is None:
                continue
            module = modules.get(match["module"])
            if module is None:
                lacking.append(match["module"])
                continue
            base = getattr(module, "base_layer", module)  # wrapped already by another adapter
            expected = _expected(base, match["part"])
            if expected is not None and tensor.shape[expected[0]] != expected[1]:
                wrong.append(f"{key}: {tuple(tensor.shape)}, the model's {type(base).__name__} needs {expected[1]}")
        if lacking or wrong:
            made_for = config.base_model_name_or_path or "an unnamed base model"
            detail = f"targets modules it lacks, e.g. {lacking[0]}" if lacking else f"has other shapes: {wrong[0]}"
            raise AdapterError(
                f"adapter {folder} was made for {made_for}, not for model {self.label!r}: it {detail} "
                f"({len(lacking) + len(wrong)} tensors do not fit); use an adapter trained on {self.label!r}"
            )


def _expected(layer: torch.nn.Module, part: str) -> tuple[int, int] | None:
    """(dimension, size) a LoRA tensor must have for its base layer: A reads the input, B writes the output."""
    if isinstance(layer, torch.nn.Linear):
        return (1, layer.in_features) if part == "lora_A" else (0, layer.out_features)
    if isinstance(layer, torch.nn.Embedding):
        return (1, layer.num_embeddings) if part == "lora_embedding_A" else (0, layer.embedding_dim)
    return None  # other layer kinds: peft checks them when it loads the weights


def adapters_of(model: torch.nn.Module, label: str | None = None) -> AdapterSet:
    """The model's `AdapterSet`, created on first use; it lives on the model, whose weights it changes."""
    found = model.__dict__.get("_kvmesh_adapters")
    if found is None:
        name = label or alias_of(getattr(model.config, "_name_or_path", None)) or model.config._name_or_path
        found = model.__dict__["_kvmesh_adapters"] = AdapterSet(model, name)
    elif label:
        found.label = label
    return found


def has_adapters(model: torch.nn.Module) -> bool:
    return model.__dict__.get("_kvmesh_adapters") is not None


def check_adapter(lm, path: str | Path) -> str:
    """Load `path` onto an in-process model (a `KVModel` such as `LocalLM`) now, so a bad adapter fails early;
    returns its adapter name."""
    model = getattr(lm, "model", None)
    if not isinstance(model, torch.nn.Module):
        raise AdapterError(
            f"adapters need a model in this process (kvmesh.LocalLM), not {type(lm).__name__}; load the agent's "
            "model with kvmesh.load_model"
        )
    return adapters_of(model, getattr(lm, "spec", None)).load(path)
