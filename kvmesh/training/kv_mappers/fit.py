"""The data c2c's mappers learn from, and the training-free ridge fit (`kvmesh c2c fit`).

    mapper, quality = fit(FitConfig(sender="gemma3-270m", receiver="smollm2-135m", out="mappers/ridge"))

Data: the InfoQA generator's TRAIN split (or a file's train split), built here, no downloads; quality and
validation read the VALIDATION split, never test. For the ridge fit a sender holds what an InfoQA agent reads: its
notes (here every shard, so the answer is in them) and the question, "Your private notes:\\n<facts>\\n\\nQuestion:
<question>" (`sender_context`). The fit reads that text followed by "\\nAnswer: <gold>" through both models (one
direct forward each, RoPE stripped), aligns the two tokenizations by character offsets and pairs each sender token
with the receiver token holding its last character. Quality is then measured on validation texts
(`mapping_quality`: the receiver's queries of "\\n\\nQuestion: <question>\\nAnswer:" over mapped against real
caches, and two controls) and a mapper below the threshold or the margin is refused, not saved.

Sliding windows: Gemma 3's sliding layers cache only the last 511 positions, so a sender context longer than
that is refused with `ContextTooLongError` (InfoQA contexts are ~100 tokens); `full_attention_only` maps only
from the sender's full-attention layers, which keep every position.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch

from kvmesh.config import ConfigError, check_choices
from kvmesh.evals.benchmarks.infoqa import Difficulty, InfoQATask, file_tasks, generate
from kvmesh.kvcomm.c2c.align import align_tokens
from kvmesh.kvcomm.c2c.capture import position_free_kv
from kvmesh.kvcomm.c2c.mappers.base import KVGeometry, MapperConfig, save_mapper
from kvmesh.kvcomm.c2c.mappers.quality import (
    QUALITY_MARGIN,
    QUALITY_THRESHOLD,
    MappingQuality,
    check_quality,
    mapping_quality,
)
from kvmesh.kvcomm.c2c.mappers.ridge import CachePair, RidgeMapper, fit_ridge
from kvmesh.kvcomm.rope import LayerRope
from kvmesh.llm import load_model

log = logging.getLogger("kvmesh")
TASKS = ("infoqa",)
PAIRING = "each sender token with the receiver token holding its last character"
Progress = Callable[[str], None]


@dataclass
class C2CData:
    """Which models, which data, where to.

    Args:
        out: folder to write the mapper (and, for training, its checkpoints) into.
        sender: the sender model: alias, local folder or Hugging Face id.
        receiver: the receiver model.
        task: where the texts come from (the InfoQA generator's train split; validation for quality).
        data_path: an InfoQA JSONL file instead of the generator: its train split trains, its validation split
            measures quality (each line's `split`, else a hash of the id and `data_seed`); its test split is never
            read, and the ids of both are recorded in the mapper (`bench latent` leaves them out).
        data_seed: the file's hash split (keep it as the runs that score the file use it).
        texts: training texts.
        validation: held-out texts for quality (fit) or validation loss (train).
        seed: seeds the generated texts (and, for training, the batch order and gate noise).
        full_attention_only: read only the sender's full-attention layers (no sliding-window length limit).
        threads: torch CPU threads (default: torch's own; 1 is much faster when other work shares the cores).
    """

    out: str
    sender: str = "gemma3-270m"
    receiver: str = "smollm2-135m"
    task: str = field(default="infoqa", metadata={"choices": TASKS})
    texts: int = 200
    validation: int = 16
    data_path: str | None = None
    data_seed: int = 0
    seed: int = 0
    full_attention_only: bool = False
    threads: int | None = None

    def __post_init__(self) -> None:
        check_choices(self)
        if self.texts < 1 or self.validation < 1:
            raise ConfigError("{texts} and {validation} must be at least 1", type(self).__name__)


@dataclass
class FitConfig(C2CData):
    """`kvmesh c2c fit`: a closed-form ridge mapper.

    Args:
        ridge_lambda: ridge penalty, relative to the mean eigenvalue of the sender's centred Gram matrix.
        threshold: least mean attention-output cosine on the validation texts; a worse mapper is refused.
        margin: how far that cosine must exceed both controls' (the receiver's own cache of another task's text,
            the mapper on another task's text); a mapper that carries too little of its context is refused.
    """

    ridge_lambda: float = 1e-2
    threshold: float = QUALITY_THRESHOLD
    margin: float = QUALITY_MARGIN


# --- data ------------------------------------------------------------------------------------------------------


def sender_context(task: InfoQATask) -> str:
    """What a sender holds: its notes (every shard) and the question."""
    notes = "\n".join(shard.strip() for shard in task.shards)
    return f"Your private notes:\n{notes}\n\nQuestion: {task.question}"


def probe_text(task: InfoQATask) -> str:
    """What the receiver reads after the context when its quality is measured."""
    return f"\n\nQuestion: {task.question}\nAnswer:"


def tasks(config: C2CData, split: str) -> list[InfoQATask]:
    """The first `texts` (train) or `validation` tasks of `split`, from the file or the generator."""
    count = config.texts if split == "train" else config.validation
    if config.data_path is None:
        return generate(count, split, config.seed, Difficulty())
    found = file_tasks(config.data_path, split, config.data_seed)
    if len(found) < count:
        raise ConfigError(
            f"{config.data_path} has {len(found)} {split} tasks; {{{'texts' if split == 'train' else 'validation'}}} "
            f"asks for {count}: ask for fewer or bring a longer file",
            type(config).__name__,
        )
    return found[:count]


def aligned_pairs(sender, receiver, texts: Sequence[str], layers: Sequence[int] | None = None) -> Iterator[CachePair]:
    """Per text, both models' position-free caches, paired row by row (`PAIRING`)."""
    sender_rope, receiver_rope = LayerRope.from_model(sender), LayerRope.from_model(receiver)
    for text in texts:
        alignment = align_tokens(text, sender.tokenizer, receiver.tokenizer)
        sender_keys, sender_values = position_free_kv(sender, alignment.sender_ids, layers, sender_rope)
        receiver_keys, receiver_values = position_free_kv(receiver, alignment.receiver_ids, rope=receiver_rope)
        rows_s, rows_r = alignment.sender_pairs()
        yield CachePair(
            sender_keys[:, :, rows_s],
            sender_values[:, :, rows_s],
            receiver_keys[:, :, rows_r],
            receiver_values[:, :, rows_r],
        )


def models(config: C2CData, sender, receiver):
    if config.threads:
        torch.set_num_threads(config.threads)
    sender, receiver = load_model(sender or config.sender), load_model(receiver or config.receiver)
    for model in (sender.model, receiver.model):
        model.requires_grad_(False).eval()
    return sender, receiver


def mapper_config(
    config: C2CData,
    kind: str,
    sender,
    receiver,
    learned: Sequence[InfoQATask],
    checked: Sequence[InfoQATask],
    **settings,
) -> MapperConfig:
    """The mapper's config; `learned` and `checked` are the tasks it is fitted on and checked on, as used."""
    data = {
        "task": config.task,
        "data_path": config.data_path,
        "split": "train",
        "seed": config.seed,
        "texts": config.texts,
        # what it learned from and what it was checked on: disjoint, and neither a test task
        "train_ids": [t.id for t in learned],
        "validation_ids": [t.id for t in checked],
        "difficulty": asdict(Difficulty()),
        "sender_text": "notes (every shard) then the question (sender_context)",
    }
    return MapperConfig(
        kind,
        sender.spec,
        receiver.spec,
        KVGeometry.of(sender),
        KVGeometry.of(receiver),
        full_attention_only=config.full_attention_only,
        data=data,
        **settings,
    )


# --- ridge -----------------------------------------------------------------------------------------------------


def fit(
    config: FitConfig, sender=None, receiver=None, progress: Progress = log.info
) -> tuple[RidgeMapper, MappingQuality]:
    """Fit a ridge mapper on the train split, check its quality on the validation split, save it to `out`.

    sender, receiver: LocalLMs to use instead of loading `config.sender` / `config.receiver`.
    Raises `MapperQualityError` (and saves nothing) when the mean cosine is below `config.threshold`.
    """
    sender, receiver = models(config, sender, receiver)
    learned, checked = tasks(config, "train"), tasks(config, "validation")
    settings = mapper_config(config, "ridge", sender, receiver, learned, checked, ridge_lambda=config.ridge_lambda)
    settings.data |= {"pairing": PAIRING}
    texts = [f"{sender_context(t)}\nAnswer: {t.answer}" for t in learned]
    started, counted = time.monotonic(), {"tokens": 0}

    def pairs() -> Iterator[CachePair]:
        for done, pair in enumerate(aligned_pairs(sender, receiver, texts, sorted(set(settings.layer_map)))):
            counted["tokens"] += pair.sender_keys.shape[2]
            if (done + 1) % 25 == 0 or done + 1 == len(texts):
                progress(f"fit: {done + 1}/{len(texts)} texts, {time.monotonic() - started:.0f} s")
            yield pair

    mapper = fit_ridge(pairs(), settings)
    mapper.config.data["tokens"] = counted["tokens"]
    probes = [(sender_context(t), probe_text(t)) for t in checked]
    quality = mapping_quality(mapper, sender, receiver, probes)
    mapper.config.quality = quality.to_dict() | {
        "split": "validation",
        "threshold": config.threshold,
        "margin": config.margin,
    }
    progress(f"quality: {quality.describe()}")
    check_quality(mapper, sender, receiver, probes, config.threshold, quality, config.margin)
    save_mapper(mapper, config.out)
    progress(f"saved the ridge mapper {mapper.config.direction} to {config.out}")
    return mapper, quality
