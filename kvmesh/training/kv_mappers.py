"""Fitting and training c2c's KV mappers (`kvmesh.kvcomm.c2c.mappers`) on local data: a ridge fit and the C2C
fuser loop.

    mapper, quality = fit(FitConfig(sender="gemma3-270m", receiver="smollm2-135m", out="mappers/ridge"))
    fuser = train(TrainConfig(sender=..., receiver=..., out="mappers/fuser", init="mappers/ridge"))

Data: the InfoQA generator's TRAIN split, built here, no downloads. A sender holds what an InfoQA agent reads:
its notes (here every shard, so the answer is in them) and the question,
"Your private notes:\\n<facts>\\n\\nQuestion: <question>" (`sender_context`). The ridge fit reads that text
followed by "\\nAnswer: <gold>" through both models (one direct forward each, RoPE stripped), aligns the two
tokenizations by character offsets and pairs each sender token with the receiver token holding its last
character. Quality is then measured on the VALIDATION split (`mapping_quality`: the receiver's queries of
"\\n\\nQuestion: <question>\\nAnswer:" over mapped against real caches) and a mapper below the threshold is
refused, not saved.

Training the fuser: the receiver's own prompt (its chat template around "Question: <question>", then
"Answer:") follows the mapped sender context, which is prepended with the receiver's RoPE applied at
0 .. S - 1; the loss is the receiver's next-token cross-entropy on the gold answer's tokens only. Both models
are frozen (requires_grad False); only the fuser learns. The gates anneal from soft to hard
(`temperature_at`). Every `checkpoint_every` steps the fuser, optimiser and step go to
`out/checkpoints/step-N/`; a run in a folder that holds a checkpoint resumes from the last one (the batch
order and the gate noise are functions of (seed, step), so a resumed run draws what the killed one would
have), with the settings that checkpoint saved (`kvmesh.runs.check_resume`; a run that fails before its first
checkpoint saves none, so the corrected command starts afresh). The final fuser is saved to `out/` itself
(mapper.json + mapper.safetensors).

Sliding windows: Gemma 3's sliding layers cache only the last 511 positions, so a sender context longer than
that is refused with `ContextTooLongError` (InfoQA contexts are ~100 tokens); `full_attention_only` maps only
from the sender's full-attention layers, which keep every position.

Caveat: gradients are accumulated one example at a time (contexts differ in length); on 2 shared CPU cores
(--threads 1) a gemma3-270m -> smollm2-135m step of 4 examples takes 2.1-2.7 s, so 800 steps take ~33 min.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from kvmesh.config import ConfigError, check_choices
from kvmesh.evals.benchmarks.infoqa import Difficulty, InfoQATask, file_tasks, generate
from kvmesh.kvcomm.c2c.align import align_tokens, encode_with_offsets
from kvmesh.kvcomm.c2c.capture import position_free_kv, prefix_cache
from kvmesh.kvcomm.c2c.mappers.base import KVGeometry, MapperConfig, check_models, load_mapper, save_mapper
from kvmesh.kvcomm.c2c.mappers.fuser import Fuser
from kvmesh.kvcomm.c2c.mappers.gates import temperature_at
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
from kvmesh.llm.cache import cache_argument
from kvmesh.runs import Comparison, Wording, check_resume, write_json
from kvmesh.training.reinforce import batch_indices, save_atomic

log = logging.getLogger("kvmesh")
TASKS = ("infoqa",)
CHECKPOINTS, TRAINER_STATE = "checkpoints", "trainer.pt"
PAIRING = "each sender token with the receiver token holding its last character"
FUSER_RUN = Wording("fuser run", resume="--resume")
# settings a resumed fuser run may change: how it runs and saves, not what it trains
RESUMABLE = Comparison(ignore=("resume", "threads", "checkpoint_every"))
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


@dataclass
class TrainConfig(C2CData):
    """`kvmesh c2c train`: the C2C fuser, trained on the receiver's answer loss.

    Args:
        steps: optimiser steps.
        batch: examples per step (gradients accumulated one example at a time).
        lr: AdamW learning rate (linear warm-up over the first 10% of steps, then linear decay).
        hidden: the fuser's hidden width per projection.
        init: a ridge mapper folder to start the fuser's linear maps from ("" starts from zero).
        checkpoint_every: save a checkpoint every this many steps (and after the last).
        resume: continue from the last checkpoint in --out when there is one.
        temperature_start: the gates' Gumbel temperature at the first step.
        temperature_end: ... at the last step (then the gates are hard 0/1).
    """

    texts: int = 400
    steps: int = 600
    batch: int = 4
    lr: float = 1e-3
    hidden: int = 256
    init: str = ""
    checkpoint_every: int = 50
    resume: bool = True
    temperature_start: float = 1.0
    temperature_end: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1 or self.batch < 1 or self.checkpoint_every < 1 or self.lr <= 0:
            raise ConfigError("{steps}, {batch} and {checkpoint_every} must be at least 1 and {lr} > 0", "TrainConfig")


# --- data ------------------------------------------------------------------------------------------------------


def sender_context(task: InfoQATask) -> str:
    """What a sender holds: its notes (every shard) and the question."""
    notes = "\n".join(shard.strip() for shard in task.shards)
    return f"Your private notes:\n{notes}\n\nQuestion: {task.question}"


def probe_text(task: InfoQATask) -> str:
    """What the receiver reads after the context when its quality is measured."""
    return f"\n\nQuestion: {task.question}\nAnswer:"


def receiver_prompt(receiver, task: InfoQATask) -> str:
    """The receiver's own prompt after the mapped context: its chat template around the question, then "Answer:"."""
    return receiver.render([("user", f"Question: {task.question}\nAnswer with a few words.")]) + "Answer:"


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


def _models(config: C2CData, sender, receiver):
    if config.threads:
        torch.set_num_threads(config.threads)
    sender, receiver = load_model(sender or config.sender), load_model(receiver or config.receiver)
    for model in (sender.model, receiver.model):
        model.requires_grad_(False).eval()
    return sender, receiver


def _mapper_config(
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
    sender, receiver = _models(config, sender, receiver)
    learned, checked = tasks(config, "train"), tasks(config, "validation")
    mapper_config = _mapper_config(
        config, "ridge", sender, receiver, learned, checked, ridge_lambda=config.ridge_lambda
    )
    mapper_config.data |= {"pairing": PAIRING}
    texts = [f"{sender_context(t)}\nAnswer: {t.answer}" for t in learned]
    started, counted = time.monotonic(), {"tokens": 0}

    def pairs() -> Iterator[CachePair]:
        for done, pair in enumerate(aligned_pairs(sender, receiver, texts, sorted(set(mapper_config.layer_map)))):
            counted["tokens"] += pair.sender_keys.shape[2]
            if (done + 1) % 25 == 0 or done + 1 == len(texts):
                progress(f"fit: {done + 1}/{len(texts)} texts, {time.monotonic() - started:.0f} s")
            yield pair

    mapper = fit_ridge(pairs(), mapper_config)
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


# --- the fuser -------------------------------------------------------------------------------------------------


@dataclass
class Example:
    """One training example, tokenized: the sender's context ids, the receiver's prompt and answer ids."""

    context_ids: list[int]
    prompt_ids: list[int]
    answer_ids: list[int]
    sender_kv: tuple[torch.Tensor, torch.Tensor] | None = None


def examples(sender, receiver, infoqa: Sequence[InfoQATask]) -> list[Example]:
    out = []
    for task in infoqa:
        answer = receiver.tokenizer(f" {task.answer}", add_special_tokens=False)["input_ids"]
        prompt = receiver.encode_prompt(receiver_prompt(receiver, task))
        out.append(Example(encode_with_offsets(sender.tokenizer, sender_context(task))[0], prompt, answer))
    return out


def answer_loss(fuser: Fuser | None, sender, receiver, example: Example, layers, ropes) -> torch.Tensor:
    """The receiver's cross-entropy on the answer tokens, reading the mapped sender context (or nothing when
    `fuser` is None: the no-communication baseline)."""
    ids = example.prompt_ids + example.answer_ids
    kwargs, offset, model = {}, 0, receiver.model
    if fuser is not None:
        if example.sender_kv is None:
            example.sender_kv = position_free_kv(sender, example.context_ids, layers, ropes[0])
        keys, values = fuser.transfer(*example.sender_kv)
        offset = keys.shape[2]
        kwargs = cache_argument(model, prefix_cache(ropes[1].apply(keys), values, model.config))
    logits = model(
        input_ids=torch.tensor([ids]),
        position_ids=torch.arange(offset, offset + len(ids))[None],
        attention_mask=torch.ones(1, offset + len(ids), dtype=torch.long),
        logits_to_keep=len(example.answer_ids) + 1,
        use_cache=True,
        **kwargs,
    ).logits[0, :-1]
    return F.cross_entropy(logits.float(), torch.tensor(example.answer_ids))


def _checkpoints(out: Path) -> list[Path]:
    return sorted((out / CHECKPOINTS).glob("step-*"), key=lambda path: int(path.name.split("-")[1]))


def _save_checkpoint(out: Path, fuser: Fuser, optimizers, step: int, history: list, config: TrainConfig) -> None:
    folder = out / CHECKPOINTS / f"step-{step}"
    save_mapper(fuser, folder)
    optimizer, schedule = optimizers
    save_atomic(
        {
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "step": step,
            "history": history,
            "config": asdict(config),
        },
        folder / TRAINER_STATE,
    )
    for old in _checkpoints(out)[:-2]:  # keep the last two
        shutil.rmtree(old, ignore_errors=True)


def _resume(out: Path, fuser: Fuser, optimizer, schedule, config: TrainConfig) -> tuple[int, list]:
    found = [path for path in _checkpoints(out) if (path / TRAINER_STATE).is_file()]
    if not found:
        return 0, []
    state = torch.load(found[-1] / TRAINER_STATE, weights_only=False)
    check_resume(out, state["config"], asdict(config), config.resume, FUSER_RUN, RESUMABLE)
    fuser.load_state_dict(load_mapper(found[-1], kind="fuser").tensors())
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    return state["step"], state["history"]


def validation_loss(fuser, sender, receiver, held_out: Sequence[Example], layers, ropes) -> float:
    """Mean answer loss on held-out examples, gates hard (eval mode)."""
    if fuser is not None:
        fuser.eval()
    with torch.no_grad():
        return sum(float(answer_loss(fuser, sender, receiver, e, layers, ropes)) for e in held_out) / len(held_out)


def train(config: TrainConfig, sender=None, receiver=None, progress: Progress = log.info) -> Fuser:
    """Train the C2C fuser (see the module docstring); resumes from the last checkpoint in `config.out`."""
    sender, receiver = _models(config, sender, receiver)
    out = Path(config.out)
    learned, checked = tasks(config, "train"), tasks(config, "validation")
    with torch.random.fork_rng():  # the fuser's initial weights, from the seed, leaving torch's own RNG alone
        torch.manual_seed(config.seed)
        fuser = Fuser(_mapper_config(config, "fuser", sender, receiver, learned, checked, hidden=config.hidden))
    if config.init:
        ridge = load_mapper(config.init, kind="ridge")
        check_models(ridge, sender, receiver)
        fuser.init_from(ridge)
        fuser.config.data["init"] = config.init
    fuser.config.data |= {"steps": config.steps, "lr": config.lr, "batch": config.batch}
    optimizer = torch.optim.AdamW(fuser.parameters(), lr=config.lr, weight_decay=0.0)
    warmup = max(1, config.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (config.steps - s) / max(1, config.steps - warmup)))
    )
    start, history = _resume(out, fuser, optimizer, schedule, config)
    layers, ropes = sorted(set(fuser.config.layer_map)), (LayerRope.from_model(sender), LayerRope.from_model(receiver))
    train_set = examples(sender, receiver, learned)
    held_out = examples(sender, receiver, checked)
    progress(
        f"fuser {fuser.config.direction}: {fuser.parameter_count():,} parameters, {len(train_set)} texts, "
        f"steps {start}/{config.steps}" + (" (resumed)" if start else "")
    )
    if start == 0:
        baseline = validation_loss(None, sender, receiver, held_out, layers, ropes)
        history.append(
            {
                "step": 0,
                "validation_no_context": baseline,
                "validation": validation_loss(fuser, sender, receiver, held_out, layers, ropes),
            }
        )
        progress(f"validation answer loss: no context {baseline:.3f}, fuser {history[-1]['validation']:.3f}")
    started = time.monotonic()
    for step in range(start, config.steps):
        fuser.train()
        fuser.temperature = temperature_at(step, config.steps, config.temperature_start, config.temperature_end)
        fuser.generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)  # this step's gate noise
        optimizer.zero_grad()
        total = 0.0
        for index in batch_indices(len(train_set), config.batch, step, config.seed):
            loss = answer_loss(fuser, sender, receiver, train_set[index], layers, ropes) / config.batch
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(fuser.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        history.append({"step": step + 1, "loss": total, "temperature": fuser.temperature})
        done = step + 1
        if done % 10 == 0 or done == config.steps:
            rate = (time.monotonic() - started) / (done - start)
            progress(
                f"step {done}/{config.steps} loss {total:.3f} temperature {fuser.temperature:.4f} "
                f"open gates {len(fuser.open_layers())}/{len(fuser.gate_logits)} "
                f"{rate:.2f} s/step, ETA {rate * (config.steps - done) / 60:.1f} min"
            )
        if done % config.checkpoint_every == 0 or done == config.steps:
            history.append(
                {"step": done, "validation": validation_loss(fuser, sender, receiver, held_out, layers, ropes)}
            )
            _save_checkpoint(out, fuser, (optimizer, schedule), done, history, config)
            progress(
                f"checkpoint: step {done} saved to {out / CHECKPOINTS / f'step-{done}'}; validation answer loss "
                f"{history[-1]['validation']:.3f}"
            )
    fuser.eval()
    if start < config.steps or not (out / "mapper.json").is_file():
        fuser.config.data["history"] = [h for h in history if "validation" in h]
        probes = [(sender_context(t), probe_text(t)) for t in checked]
        quality = mapping_quality(fuser, sender, receiver, probes)
        fuser.config.quality = quality.to_dict() | {"split": "validation", "threshold": QUALITY_THRESHOLD}
        progress(f"quality (hard gates): {quality.describe()}")
        save_mapper(fuser, out)
        write_json(out / "history.json", history, indent=1)
        progress(f"saved the fuser to {out}")
    return fuser
