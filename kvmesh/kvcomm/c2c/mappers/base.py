"""Mappers for the `c2c` channel: a sender model's cache turned into a receiver model's KV format.

    mapper = load_mapper("mappers/ridge")                    # a folder: mapper.json + mapper.safetensors
    check_models(mapper, sender, receiver)                   # refuses a mapper fitted for other models
    keys, values = mapper.transfer(sender_keys, sender_values)
        # (Ls, Hs, S, Ds) position-free sender cache -> (Lr, Hr, S, Dr) position-free, receiver format
    keys, values = mapper.fuse(receiver_keys, receiver_values, sender_keys, sender_values)
        # fusion over a text both read (sender rows already aligned to the receiver's tokens, `align.py`)

The contract (`KVMapper`): keys are always mapped position-free. The caller strips the sender's RoPE
(`LayerRope.strip`) before and applies the receiver's after, at the positions the receiver will read them at;
nothing is ever added to rotated keys. Each receiver layer l reads sender layer `layer_map[l]`, by default
terminal-aligned as in C2C: round(l · (Ls - 1) / (Lr - 1)), so first reads first and last reads last
(`full_attention_only` reads only the sender's full-attention layers, which keep every position).

A mapper serves the c2c modes in `modes` (`transfer`: the sender's context, mapped, read in front of the
receiver's prompt; `fusion`: the receiver's rows of a shared text fused with the sender's), and only those: a
mapper trained in one mode is refused in the other. `open_layers` are the receiver layers it feeds (a trained
mapper's gates close some); the channel hides the mapped context from the others (transfer) or leaves their rows
as they were (fusion).

`RidgeMapper` is the training-free mapper: per receiver layer, a closed-form ridge regression with bias from
the sender's keys (values), flattened over heads, to the receiver's keys (values), fitted on aligned rows of
both models' caches of the same texts (`fit_ridge`, in `kvmesh.kvcomm.c2c.mappers.ridge`).
`kvmesh.kvcomm.c2c.mappers.fuser.Fuser` (transfer) and `kvmesh.kvcomm.c2c.mappers.residual.ResidualFuser`
(fusion: C2C's gated residual over both models' rows) are the trained ones. Both save to one folder format whose
`mapper.json` says the kind, the two models, the direction and what it was fitted on (`MapperConfig.data`),
because a mapper is only good for the pair, direction and kind of data it was fitted on.

Quality: `mapping_quality` / `check_quality` (in `kvmesh.kvcomm.c2c.mappers.quality`) judge a mapper by
the receiver's attention outputs over mapped against real caches, per layer.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import load_file, save

from kvmesh.kvcomm.rope import layer_types
from kvmesh.runs import write_atomic, write_json

KINDS = {
    "ridge": "kvmesh.kvcomm.c2c.mappers.ridge:RidgeMapper",
    "fuser": "kvmesh.kvcomm.c2c.mappers.fuser:Fuser",
    "residual": "kvmesh.kvcomm.c2c.mappers.residual:ResidualFuser",
}
TRANSFER, FUSION = "transfer", "fusion"  # the c2c modes a mapper may serve
CONFIG_FILE, WEIGHTS_FILE = "mapper.json", "mapper.safetensors"
FORMAT_VERSION = 1


class MapperError(ValueError):
    """A mapper folder that cannot be read, or a mapper that cannot be built; the message says how to fix it."""


class MapperMismatchError(MapperError):
    """A mapper fitted for other models than the ones it is asked to connect."""


@dataclass(frozen=True)
class KVGeometry:
    """The shape of one model's KV cache.

    Args:
        layers: number of layers L.
        kv_heads: key/value heads per layer H.
        head_dim: dimension of one head D.
        layer_types: attention type of each layer ("full_attention", "sliding_attention").
    """

    layers: int
    kv_heads: int
    head_dim: int
    layer_types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_types", tuple(self.layer_types) or ("full_attention",) * self.layers)
        if len(self.layer_types) != self.layers:
            raise MapperError(f"{len(self.layer_types)} layer types for {self.layers} layers")

    @classmethod
    def of(cls, model) -> KVGeometry:
        """The geometry of a model (a LocalLM, a transformers model, or its config)."""
        config = getattr(getattr(model, "model", model), "config", model)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        return cls(config.num_hidden_layers, heads, head_dim, tuple(layer_types(config)))

    @property
    def width(self) -> int:
        """H · D: one token's keys (or values) of one layer, flattened over heads."""
        return self.kv_heads * self.head_dim

    @property
    def full_attention_layers(self) -> list[int]:
        return [i for i, kind in enumerate(self.layer_types) if kind != "sliding_attention"]


def default_layer_map(sender: KVGeometry, receiver: KVGeometry, full_attention_only: bool = False) -> list[int]:
    """Receiver layer l reads sender layer round(l · (Ls - 1) / (Lr - 1)) (terminal-aligned, as in C2C); with
    `full_attention_only`, the same over the sender's full-attention layers only."""
    candidates = sender.full_attention_layers if full_attention_only else list(range(sender.layers))
    if not candidates:
        raise MapperError("the sender has no full-attention layers to read; drop full_attention_only")
    if receiver.layers == 1:
        return [candidates[-1]]
    span = len(candidates) - 1
    return [candidates[int(layer * span / (receiver.layers - 1) + 0.5)] for layer in range(receiver.layers)]


@dataclass
class MapperConfig:
    """What a mapper connects, how it was fitted, and on what.

    Args:
        kind: "ridge" (closed-form, training-free), "fuser" (trained for transfer) or "residual" (trained for
            fusion, C2C's).
        sender: the sender model's spec (alias, folder or Hugging Face id).
        receiver: the receiver model's spec.
        sender_geometry: the sender's KV geometry.
        receiver_geometry: the receiver's KV geometry.
        layer_map: for each receiver layer, the sender layer it reads (empty: the terminal-aligned default).
        full_attention_only: read only the sender's full-attention layers (for the default layer map).
        direction: "sender -> receiver", filled in from the two specs when empty.
        data: what it was fitted on: task, split, seed, number of texts, tokens (free-form, saved as given).
        ridge_lambda: ridge penalty, relative to the mean eigenvalue of the centred sender Gram matrix.
        fuse_weight: in fusion mode, a ridge mapper returns receiver + fuse_weight · (mapped - receiver).
        hidden: the fuser's hidden width per projection.
        quality: the quality figures measured after fitting (`MappingQuality.to_dict`), if any.
    """

    kind: str
    sender: str
    receiver: str
    sender_geometry: KVGeometry
    receiver_geometry: KVGeometry
    layer_map: list[int] = field(default_factory=list)
    full_attention_only: bool = False
    direction: str = ""
    data: dict = field(default_factory=dict)
    ridge_lambda: float = 1e-2
    fuse_weight: float = 0.5
    hidden: int = 256
    quality: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise MapperError(f"mapper kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("sender_geometry", "receiver_geometry"):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, KVGeometry(**getattr(self, name)))
        if not self.layer_map:
            self.layer_map = default_layer_map(self.sender_geometry, self.receiver_geometry, self.full_attention_only)
        self.layer_map = [int(layer) for layer in self.layer_map]
        if len(self.layer_map) != self.receiver_geometry.layers:
            raise MapperError(
                f"layer_map has {len(self.layer_map)} entries for a receiver with "
                f"{self.receiver_geometry.layers} layers"
            )
        if not all(0 <= layer < self.sender_geometry.layers for layer in self.layer_map):
            raise MapperError(f"layer_map reads sender layers outside 0 .. {self.sender_geometry.layers - 1}")
        if self.ridge_lambda < 0 or self.hidden < 1:
            raise MapperError(f"need ridge_lambda >= 0 and hidden >= 1, got {self.ridge_lambda}, {self.hidden}")
        self.direction = self.direction or f"{self.sender} -> {self.receiver}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"format": FORMAT_VERSION}

    @classmethod
    def from_dict(cls, data: dict) -> MapperConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [
            name for name in ("kind", "sender", "receiver", "sender_geometry", "receiver_geometry") if name not in data
        ]
        if missing:
            raise MapperError(f"mapper config lacks {', '.join(missing)}")
        return cls(**{key: value for key, value in data.items() if key in known})


def flatten(kv: torch.Tensor) -> torch.Tensor:
    """(L, H, S, D) -> (L, S, H · D)."""
    layers, heads, length, dim = kv.shape
    return kv.permute(0, 2, 1, 3).reshape(layers, length, heads * dim)


def unflatten(rows: torch.Tensor, heads: int) -> torch.Tensor:
    """(L, S, H · D) -> (L, H, S, D)."""
    layers, length, width = rows.shape
    return rows.reshape(layers, length, heads, width // heads).permute(0, 2, 1, 3)


class KVMapper(ABC):
    """Maps a sender model's position-free cache into a receiver's format (see the module docstring). A mapper
    implements the hook of each mode in `modes`; the others refuse."""

    kind: ClassVar[str]
    modes: ClassVar[tuple[str, ...]]
    config: MapperConfig

    def transfer(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Context transfer: sender keys, values (Ls, Hs, S, Ds), position-free -> (Lr, Hr, S, Dr), position-free."""
        raise self.wrong_mode(TRANSFER)

    def fuse(
        self,
        receiver_keys: torch.Tensor,
        receiver_values: torch.Tensor,
        sender_keys: torch.Tensor,
        sender_values: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fusion over a text both read: receiver (Lr, Hr, S, Dr) and sender (Ls, Hs, S, Ds) rows of the same S
        receiver tokens (sender rows aligned to them), position-free -> fused (Lr, Hr, S, Dr), position-free."""
        raise self.wrong_mode(FUSION)

    def open_layers(self) -> list[int]:
        """The receiver layers this mapper feeds (default: every one)."""
        return list(range(self.config.receiver_geometry.layers))

    def layer_gates(self) -> torch.Tensor | None:
        """(Lr,) how much of its attention each receiver layer may pay the mapped context, in [0, 1] (soft while
        a gated mapper trains); None: all of it in every layer (a mapper without gates)."""
        return None

    def wrong_mode(self, mode: str) -> MapperError:
        """The error for a mode this mapper was not made for."""
        return MapperError(
            f"this {self.config.kind} mapper ({self.config.direction}) serves c2c {' and '.join(self.modes)}, not "
            f"{mode}: train one for {mode} (kvmesh c2c train --mode {mode})"
        )

    @abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything learned, by name (what `mapper.safetensors` holds)."""

    @classmethod
    @abstractmethod
    def from_tensors(cls, config: MapperConfig, tensors: dict[str, torch.Tensor]) -> KVMapper:
        """The mapper `tensors()` came from."""

    def check_sender(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        geometry = self.config.sender_geometry
        expected = (geometry.layers, geometry.kv_heads, geometry.head_dim)
        for name, kv in (("keys", keys), ("values", values)):
            if kv.dim() != 4 or (kv.shape[0], kv.shape[1], kv.shape[3]) != expected:
                raise MapperError(
                    f"sender {name} must be (L={expected[0]}, H={expected[1]}, S, D={expected[2]}) for "
                    f"{self.config.sender}, got {tuple(kv.shape)}"
                )
        if keys.shape != values.shape:
            raise MapperError(f"sender keys {tuple(keys.shape)} and values {tuple(values.shape)} differ")

    def save(self, path: str | Path) -> Path:
        return save_mapper(self, path)


# --- folders ---------------------------------------------------------------------------------------------------


def save_mapper(mapper: KVMapper, path: str | Path) -> Path:
    """Write `mapper` to the folder `path` (created if needed): mapper.json (config) + mapper.safetensors."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().cpu().clone() for name, tensor in mapper.tensors().items()}  # no sharing
    write_atomic(folder / WEIGHTS_FILE, lambda file: file.write(save(tensors)))  # a crash keeps the last whole file
    write_json(folder / CONFIG_FILE, mapper.config.to_dict())
    return folder


def mapper_class(kind: str) -> type[KVMapper]:
    if kind not in KINDS:
        raise MapperError(f"unknown mapper kind {kind!r}; known kinds: {', '.join(KINDS)}")
    module, name = KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def load_config(path: str | Path) -> MapperConfig:
    """The config of the mapper saved in folder `path`."""
    folder = Path(path)
    if not folder.is_dir():
        raise MapperError(f"no mapper folder at {folder}; fit one with `kvmesh c2c fit --out {folder}`")
    file = folder / CONFIG_FILE
    if not file.is_file():
        raise MapperError(f"{folder} holds no {CONFIG_FILE}: not a mapper folder (fit or train one into it)")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise MapperError(f"{file} is not valid JSON ({error}); fit the mapper again") from error
    if not isinstance(data, dict):
        raise MapperError(f"{file} must hold a JSON object")
    if data.get("format", FORMAT_VERSION) > FORMAT_VERSION:
        raise MapperError(f"{file} has format {data['format']}; this kvmesh reads up to {FORMAT_VERSION}: upgrade it")
    return MapperConfig.from_dict(data)


def load_mapper(path: str | Path, kind: str | None = None) -> KVMapper:
    """The mapper saved in folder `path`, as its own class (`kind`, if given, must match what is saved)."""
    config = load_config(path)
    if kind is not None and config.kind != kind:
        raise MapperError(f"{path} holds a {config.kind!r} mapper, not a {kind!r} one")
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise MapperError(f"{path} has {CONFIG_FILE} but no {WEIGHTS_FILE}; fit or train the mapper again")
    try:
        tensors = load_file(str(weights))
    except Exception as error:  # safetensors' own error names no file: a truncated or foreign file
        raise MapperError(
            f"{weights} cannot be read ({type(error).__name__}: {error}); it may be truncated or not a safetensors "
            "file: fit or train the mapper again"
        ) from error
    return mapper_class(config.kind).from_tensors(config, tensors)


def _name(model) -> str:
    spec = model if isinstance(model, str) else getattr(model, "spec", None) or getattr(model, "name_or_path", "")
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.is_dir() else spec


def check_models(mapper: KVMapper | MapperConfig, sender, receiver) -> None:
    """Raise `MapperMismatchError` unless the mapper maps `sender` -> `receiver` (LocalLMs or specs; for models
    their KV geometry must match too)."""
    config = mapper if isinstance(mapper, MapperConfig) else mapper.config
    wrong = []
    for side, model, spec, geometry in (
        ("sender", sender, config.sender, config.sender_geometry),
        ("receiver", receiver, config.receiver, config.receiver_geometry),
    ):
        if _name(model) != _name(spec):
            wrong.append(f"its {side} is {spec}, not {_name(model)}")
        elif not isinstance(model, str) and KVGeometry.of(model) != geometry:
            wrong.append(f"the {side} {spec} has another KV geometry than it was fitted on ({KVGeometry.of(model)})")
    if wrong:
        asked = f"{_name(sender)} -> {_name(receiver)}"
        raise MapperMismatchError(
            f"this {config.kind} mapper maps {config.direction} (fitted on {config.data or 'unrecorded data'}), but "
            f"{asked} was asked for: {'; '.join(wrong)}. Fit one for this pair: kvmesh c2c fit --sender "
            f"{_name(sender)} --receiver {_name(receiver)} --out DIR"
        )
