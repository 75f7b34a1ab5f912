"""Training c2c's gated mappers (`kvmesh c2c train`) in the mode they will be used in, on the prompts they will be
used with.

    fuser = train(TrainConfig(out="mappers/fuser", mode="transfer", init="mappers/ridge"))     # a `Fuser`
    fuser = train(TrainConfig(out="mappers/fusion", mode="fusion", init="mappers/ridge"))      # a `ResidualFuser`

Examples come from `kvmesh bench latent`'s sender and receiver agents on the train split
(`kvmesh.training.kv_mappers.examples`), the loss is the receiver's cross-entropy over its whole target reply, and
both models are frozen (requires_grad False): only the fuser learns. The gates anneal from soft to hard
(`temperature_at`); in transfer a gate scales the attention its layer pays the mapped context, so the hard gate
is the channel's mask.

Choosing on validation: every `checkpoint_every` steps the validation loss is measured with hard gates and the
fuser, optimiser and step go to `out/checkpoints/step-N/` (the best one so far is kept too); at the end the
checkpoint with the lowest validation loss is saved to `out/` (mapper.json + mapper.safetensors) with what it was
chosen on: its validation loss, the receiver's loss reading nothing, and in transfer its loss reading another
task's context through the same fuser (`check_recorded` compares them before the channel uses it), its open gates
and the validation curve. Each checkpoint logs the open gates per layer.

Resuming: a run in a folder that holds a checkpoint resumes from the last one (the batch order and the gate noise
are functions of (seed, step), so a resumed run draws what the killed one would have), with the settings that
checkpoint saved (`kvmesh.runs.check_resume`; a run that fails before its first checkpoint saves none, so the
corrected command starts afresh).

Caveat: gradients are accumulated one example at a time (prompts differ in length).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from kvmesh.config import ConfigError
from kvmesh.evals.studies.latent import LatentStudyConfig
from kvmesh.evals.studies.latent_teams import study_agents
from kvmesh.kvcomm.c2c.mappers.base import FUSION, TRANSFER, check_models, load_mapper, save_mapper
from kvmesh.kvcomm.c2c.mappers.fuser import Fuser
from kvmesh.kvcomm.c2c.mappers.gates import GatedMapper, temperature_at
from kvmesh.kvcomm.c2c.mappers.residual import ResidualFuser
from kvmesh.kvcomm.rope import LayerRope
from kvmesh.llm.layer_mask import use_layer_masks
from kvmesh.runs import Comparison, Wording, check_resume, write_json
from kvmesh.training.kv_mappers.examples import (
    Example,
    build_examples,
    fusion_loss,
    fusion_rows,
    sender_cache,
    transfer_loss,
)
from kvmesh.training.kv_mappers.fit import C2CData, Progress, log, mapper_config, models, tasks
from kvmesh.training.reinforce import batch_indices, save_atomic

CHECKPOINTS, BEST, TRAINER_STATE = "checkpoints", "best", "trainer.pt"
FUSER_RUN = Wording("fuser run", resume="--resume")
# settings a resumed fuser run may change: how it runs and saves, not what it trains
RESUMABLE = Comparison(ignore=("resume", "threads", "checkpoint_every"))
MAPPERS = {TRANSFER: Fuser, FUSION: ResidualFuser}


@dataclass
class TrainConfig(C2CData):
    """`kvmesh c2c train`: a gated fuser, trained on the receiver's reply loss in the mode it will be used in.

    Args:
        mode: "transfer" (the sender's prompt, mapped, read in front of the receiver's: a `Fuser`) or "fusion"
            (the receiver's rows of the question fused with the sender's: a `ResidualFuser`).
        validation: validation texts: the first half chooses the checkpoint, the second measures the chosen one.
        steps: optimiser steps.
        batch: examples per step (gradients accumulated one example at a time).
        lr: AdamW learning rate (linear warm-up over the first 10% of steps, then linear decay).
        gate_lr: the gate logits' learning rate (same schedule): they start at 2 (open) and must be able to cross
            0 within a run, which `lr` alone (about 0.3 in all over 600 steps) would not let them.
        hidden: the fuser's hidden width per projection.
        init: a ridge mapper folder to start the fuser's linear maps from ("" starts from random).
        checkpoint_every: measure the validation loss and save a checkpoint every this many steps (and after the
            last); the best one on validation is the one saved.
        resume: continue from the last checkpoint in --out when there is one.
        temperature_start: the gates' Gumbel temperature at the first step.
        temperature_end: ... at the last step (then the gates are hard 0/1).
    """

    mode: str = field(default=TRANSFER, metadata={"choices": (TRANSFER, FUSION)})
    texts: int = 400
    validation: int = 32
    steps: int = 600
    batch: int = 4
    lr: float = 1e-3
    gate_lr: float = 5e-2
    hidden: int = 256
    init: str = ""
    checkpoint_every: int = 50
    resume: bool = True
    temperature_start: float = 1.0
    temperature_end: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1 or self.batch < 1 or self.checkpoint_every < 1 or self.lr <= 0 or self.gate_lr <= 0:
            raise ConfigError(
                "{steps}, {batch} and {checkpoint_every} must be at least 1, {lr} and {gate_lr} > 0", "TrainConfig"
            )
        if self.validation < 2:
            raise ConfigError(
                "{validation} needs at least 2 texts: half choose the checkpoint, half check it", "TrainConfig"
            )


class Losses:
    """The receiver's reply loss on examples in one mode, with what the frozen models give computed once."""

    def __init__(self, mode: str, sender, receiver, layers: Sequence[int]) -> None:
        self.mode, self.sender, self.receiver, self.layers = mode, sender, receiver, layers
        self.ropes = LayerRope.from_model(sender), LayerRope.from_model(receiver)
        if mode == TRANSFER and not use_layer_masks(receiver.model):  # a gate acts through per-layer logit biases
            raise NotImplementedError(
                f"{receiver.spec}: its attention takes no dense mask, so a gate cannot act on a layer's attention; "
                "load it with attn_implementation='sdpa' or 'eager'"
            )

    def __call__(self, mapper: GatedMapper | None, example: Example, which: int = 0):
        """`example`'s loss through `mapper` (None: reading nothing), from the sender's prompt `which` (0: its own
        notes; 1: another task's notes, the content control)."""
        if self.mode == FUSION:
            rows = fusion_rows(self.sender, self.receiver, example, self.layers, self.ropes, which)
            return fusion_loss(mapper, self.receiver, example, rows, self.ropes[1])
        context = sender_cache(self.sender, example, self.layers, self.ropes[0], which)
        return transfer_loss(mapper, self.receiver, example, context, self.ropes[1])

    @torch.no_grad()
    def mean(self, mapper: GatedMapper | None, examples: Sequence[Example], which: int = 0) -> float:
        """Mean loss over `examples`, gates hard (see `__call__` for `which`)."""
        if mapper is not None:
            mapper.eval()
        return sum(float(self(mapper, example, which)) for example in examples) / len(examples)


def _checkpoints(out: Path) -> list[Path]:
    return sorted((out / CHECKPOINTS).glob("step-*"), key=lambda path: int(path.name.split("-")[1]))


def _save_checkpoint(out: Path, fuser, optimizers, step: int, history: list, config: TrainConfig) -> None:
    folder = out / CHECKPOINTS / f"step-{step}"
    save_mapper(fuser, folder)
    optimizer, schedule = optimizers
    state = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "step": step}
    save_atomic(state | {"history": history, "config": asdict(config)}, folder / TRAINER_STATE)
    for old in _checkpoints(out)[:-2]:  # keep the last two
        shutil.rmtree(old, ignore_errors=True)


def _resume(out: Path, fuser, optimizer, schedule, config: TrainConfig) -> tuple[int, list]:
    found = [path for path in _checkpoints(out) if (path / TRAINER_STATE).is_file()]
    if not found:
        return 0, []
    state = torch.load(found[-1] / TRAINER_STATE, weights_only=False)
    check_resume(out, state["config"], asdict(config), config.resume, FUSER_RUN, RESUMABLE)
    fuser.load_state_dict(load_mapper(found[-1], kind=fuser.kind).tensors())
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    return state["step"], state["history"]


def _build(config: TrainConfig, sender, receiver, learned, checked) -> GatedMapper:
    kind = MAPPERS[config.mode].kind
    with torch.random.fork_rng():  # the fuser's initial weights, from the seed, leaving torch's own RNG alone
        torch.manual_seed(config.seed)
        fuser = MAPPERS[config.mode](
            mapper_config(config, kind, sender, receiver, learned, checked, hidden=config.hidden)
        )
    if config.init:
        ridge = load_mapper(config.init, kind="ridge")
        check_models(ridge, sender, receiver)
        fuser.init_from(ridge)
        fuser.config.data["init"] = config.init
    fuser.config.data |= {"steps": config.steps, "lr": config.lr, "batch": config.batch, "mode": config.mode}
    fuser.config.data["prompts"] = "kvmesh bench latent's sender and receiver agents; target: evidence + Answer"
    return fuser


def optimizer_for(fuser: GatedMapper, config: TrainConfig):
    """AdamW with the gate logits in a group of their own (`gate_lr`), and the warm-up then linear decay schedule."""
    gates = [fuser.gate_logits]
    rest = [p for p in fuser.parameters() if p is not fuser.gate_logits]
    groups = [{"params": rest, "lr": config.lr}, {"params": gates, "lr": config.gate_lr}]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    warmup = max(1, config.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (config.steps - s) / max(1, config.steps - warmup)))
    )
    return optimizer, schedule


def _gates(fuser: GatedMapper) -> str:
    return f"open layers {fuser.open_layers()} of {len(fuser.gate_logits)}"


def train(config: TrainConfig, sender=None, receiver=None, progress: Progress = log.info) -> GatedMapper:
    """Train a gated fuser (see the module docstring); resumes from the last checkpoint in `config.out`."""
    sender, receiver = models(config, sender, receiver)
    out = Path(config.out)
    learned, checked = tasks(config, "train"), tasks(config, "validation")
    fuser = _build(config, sender, receiver, learned, checked)
    optimizer, schedule = optimizer_for(fuser, config)
    start, history = _resume(out, fuser, optimizer, schedule, config)
    agents = study_agents(LatentStudyConfig(model=receiver.spec), sender.spec)
    for agent, model in zip(agents, (sender, receiver), strict=True):
        agent.model = model  # the loaded models, not their specs loaded again
    train_set, held_out = build_examples(*agents, learned), build_examples(*agents, checked)
    half = len(held_out) // 2  # the first half chooses the checkpoint, the second checks the chosen one
    choose, check = held_out[:half], held_out[half:]
    losses = Losses(config.mode, sender, receiver, sorted(set(fuser.config.layer_map)))
    progress(
        f"{fuser.kind} {fuser.config.direction} ({config.mode}): {fuser.parameter_count():,} parameters, "
        f"{len(train_set)} train texts, {len(choose)} + {len(check)} validation texts (choosing + checking), "
        f"steps {start}/{config.steps}" + (" (resumed)" if start else "")
    )
    if start == 0:
        history.append({"step": 0, "validation_no_context": losses.mean(None, choose)})
        _validate(fuser, 0, losses, choose, history, out)
        progress(
            f"validation reply loss: no context {history[0]['validation_no_context']:.3f}, "
            f"untrained {history[1]['validation']:.3f}"
        )
    started = time.monotonic()
    for step in range(start, config.steps):
        fuser.train()
        fuser.temperature = temperature_at(step, config.steps, config.temperature_start, config.temperature_end)
        fuser.generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)  # this step's gate noise
        optimizer.zero_grad()
        total = 0.0
        for index in batch_indices(len(train_set), config.batch, step, config.seed):
            loss = losses(fuser, train_set[index]) / config.batch
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
                f"{rate:.2f} s/step, ETA {rate * (config.steps - done) / 60:.1f} min"
            )
        if done % config.checkpoint_every == 0 or done == config.steps:
            validation = _validate(fuser, done, losses, choose, history, out)
            _save_checkpoint(out, fuser, (optimizer, schedule), done, history, config)
            progress(f"checkpoint: step {done}, validation reply loss {validation:.3f}, {_gates(fuser)}")
    return _finish(config, fuser, history, losses, check, progress)


def _validate(fuser: GatedMapper, step: int, losses: Losses, choose, history: list, out: Path) -> float:
    """The validation loss at `step` on the choosing half, appended to `history`; the fuser becomes BEST (its step
    and loss recorded in it) when it is strictly the lowest so far, the untrained one (step 0) included. BEST is
    written before the step's checkpoint, so a run killed between the two redoes the step and writes the same."""
    validation = losses.mean(fuser, choose)
    earlier = [h["validation"] for h in history if "validation" in h]
    history.append({"step": step, "validation": validation, "open": fuser.open_layers()})
    if math.isfinite(validation) and all(validation < loss for loss in earlier if math.isfinite(loss)):
        live = fuser.config
        fuser.config = replace(live, data=dict(live.data) | {"chosen_step": step, "chosen_validation": validation})
        try:
            save_mapper(fuser, out / BEST)
        finally:
            fuser.config = live
    return validation


def _finish(config: TrainConfig, fuser: GatedMapper, history: list, losses: Losses, check, progress) -> GatedMapper:
    """Save BEST (the fuser lowest on the choosing half of validation) to `out`, its quality measured on the
    checking half, which chose nothing: its loss, reading nothing, and reading a sender that read another task's
    notes."""
    out = Path(config.out)
    if not (out / BEST).is_dir():
        raise ValueError(
            f"no checkpoint of {out} had a finite validation loss: the run diverged; lower --lr or --gate-lr"
        )
    chosen = load_mapper(out / BEST, kind=fuser.kind)
    quality = {
        "split": "validation (checking half)",
        "validation_loss": losses.mean(chosen, check),
        "no_context_loss": losses.mean(None, check),
        "shuffled_loss": losses.mean(chosen, check, which=1),
        "chosen_step": chosen.config.data["chosen_step"],
        "open_layers": chosen.open_layers(),
    }
    chosen.config.quality = quality
    chosen.config.data["history"] = [h for h in history if "validation" in h or "validation_no_context" in h]
    save_mapper(chosen, out)
    write_json(out / "history.json", history, indent=1)
    shown = {key: round(value, 3) if isinstance(value, float) else value for key, value in quality.items()}
    progress(f"chosen on validation: step {quality['chosen_step']}; {shown}; saved to {out}")
    return chosen
