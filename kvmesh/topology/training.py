"""Designer training: REINFORCE over sampled graphs, validation, checkpoints every update, resume.

    normaliser = mean tokens of the team's own graph on the first batch     (unless configured)
    for each update:
        tasks   = the next batch of the (seeded, per-epoch shuffled) training set
        graphs  = designer.sample_batch(tasks)                   one DAG per task, with log p(G)
        results = team.run_batch(tasks, graphs=graphs)           ONE batched pass through the runtime
        u       = metric(example, result) − λ·tokens / normaliser
        loss    = −mean((u − baseline)·log p(G)) + the designer's regularisers
        every `eval_every` updates and after the last: the deterministic graphs on the validation set;
        the best validation utility is what the designer keeps

Every finished update is in `out/checkpoint.pt` (weights, optimiser, sampler state, history), written
atomically, so a run killed at any point resumes from its last update with `resume=True` and loses at most
the update in flight. Each rollout runs the real team: nothing is simulated.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from kvmesh.topology.designer import example_id, example_task

if TYPE_CHECKING:
    from kvmesh.agents import CommGraph, Team
    from kvmesh.topology.designer import Designer, Metric

CHECKPOINT = "checkpoint.pt"


def rollouts(team: Team, examples: Sequence, graphs: Sequence[CommGraph] | None, metric: Metric):
    """(score, tokens, result) per example, all run in one batched pass; graphs None: the team's own."""
    results = team.run_batch([example_task(e) for e in examples], graphs=graphs)
    return [(float(metric(e, r)), r.usage.total.total_tokens, r) for e, r in zip(examples, results, strict=True)]


def summarize(scored, token_weight: float, normaliser: float) -> dict:
    """Mean score, tokens, model calls and utility of `rollouts` output."""
    n = max(len(scored), 1)
    score = sum(s for s, _, _ in scored) / n
    tokens = sum(t for _, t, _ in scored) / n
    calls = sum(r.usage.total.calls for _, _, r in scored) / n
    return {
        "score": score,
        "tokens": tokens,
        "calls": calls,
        "utility": score - token_weight * tokens / normaliser,
    }


def validate(designer: Designer, team: Team, valset: Sequence, metric: Metric, normaliser: float) -> dict:
    graphs = designer.design_batch([example_task(e) for e in valset])
    summary = summarize(rollouts(team, valset, graphs, metric), designer.config.token_weight, normaliser)
    summary["edges"] = sum(len(g.edges()) for g in graphs) / max(len(graphs), 1)
    summary["agents"] = sum(len(g.agents) for g in graphs) / max(len(graphs), 1)
    return summary


def batch_indices(count: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The examples of update `step`: consecutive slices of a seeded shuffle, reshuffled every epoch."""
    per_epoch = max(1, count // batch_size) if count >= batch_size else 1
    epoch, slot = divmod(step, per_epoch)
    order = list(range(count))
    random.Random(f"{seed}-{epoch}").shuffle(order)
    return order[slot * batch_size : slot * batch_size + batch_size]


def save_atomic(state: dict, path: Path) -> None:
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def _progress(total: int, done: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=desc, unit="update", dynamic_ncols=True)


def measure_normaliser(designer: Designer, team: Team, trainset: Sequence, metric: Metric) -> float:
    """Mean tokens per task of the team's own graph on the first training batch: what costs λ."""
    if designer.config.token_normalizer > 0:
        return designer.config.token_normalizer
    first = [trainset[i] for i in batch_indices(len(trainset), designer.config.batch_size, 0, designer.config.seed)]
    scored = rollouts(team, first, None, metric)
    return max(1.0, sum(t for _, t, _ in scored) / len(scored))


def open_checkpoint(out: Path | None, designer: Designer, resume: bool, ids: list[str]) -> dict | None:
    """The saved state of an earlier run in `out` (resume), or None; refuses to overwrite one silently, and to
    resume one with another designer, configuration (more `steps` included) or set of examples."""
    if out is None:
        return None
    path = out / CHECKPOINT
    if not path.exists():
        return None
    if not resume:
        raise FileExistsError(f"{out} already holds a designer run; pass resume=True (--resume) or pick another folder")
    state = torch.load(path, weights_only=False)
    if state["kind"] != designer.kind or state["config"] != asdict(designer.config):
        raise ValueError(f"{out} holds a run with another designer or configuration; pick another folder")
    if state.get("ids") != ids:
        raise ValueError(f"{out} holds a run on other training or validation examples; pick another folder")
    return state


def policy_loss(designer: Designer, samples, probs, utilities: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """REINFORCE: −mean(advantage · log p(G)), plus the designer's weighted regularisers (returned apart)."""
    advantages = designer.advantages(utilities)
    policy = -(advantages * torch.stack([s.log_prob for s in samples])).mean()
    terms = designer.regularizers(probs)
    return policy + sum(terms.values(), torch.zeros(())), terms


def reinforce(
    designer: Designer,
    team: Team,
    trainset: Sequence,
    valset: Sequence,
    metric: Metric,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    phase: str = "reinforce",
    start_best: dict | None = None,
) -> dict:
    """Train `designer` (bound to `team`) in place; returns (and stores in `designer.training`) its figures.

    `start_best`: the validation figures of the weights training starts from (with "weights" and "extra"),
    which an update must beat to be kept; AGP's fitted model, before tuning."""
    config = designer.config
    if not trainset:
        raise ValueError("the training set is empty")
    out = Path(out) if out is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.Adam(designer.module.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    ids = [example_id(e, i) for i, e in enumerate(trainset)] + [example_id(e, i) for i, e in enumerate(valset)]
    state = open_checkpoint(out, designer, resume, ids)
    if state is None:
        started = time.perf_counter()
        normaliser = designer.training.get("normaliser")
        if not normaliser:  # only utilities need it: no updates and no validation, no rollouts
            needed = config.steps > 0 or bool(valset)
            normaliser = measure_normaliser(designer, team, trainset, metric) if needed else 1.0
        state = {
            "kind": designer.kind,
            "config": asdict(designer.config),
            "ids": ids,
            "step": 0,
            "normaliser": normaliser,
            "history": [],
            "validation": [],
            "best": start_best,
            "seconds": time.perf_counter() - started,
        }
    else:
        designer.module.load_state_dict(state["weights"])
        designer.load_extra_state(state["extra"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
    normaliser = state["normaliser"]
    bar = _progress(config.steps, state["step"], f"{designer.kind} {phase}", progress)
    for step in range(state["step"], config.steps):
        began = time.perf_counter()
        batch = [trainset[i] for i in batch_indices(len(trainset), config.batch_size, step, config.seed)]
        samples, probs = designer.sample_batch([example_task(e) for e in batch], generator)
        scored = rollouts(team, batch, [s.graph for s in samples], metric)
        utilities = torch.tensor(
            [score - config.token_weight * tokens / normaliser for score, tokens, _ in scored], dtype=torch.float32
        )
        loss, terms = policy_loss(designer, samples, probs, utilities)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        designer.after_update(step)
        record = {"step": step + 1, **summarize(scored, config.token_weight, normaliser), "loss": loss.item()}
        record |= {name: value.item() for name, value in terms.items()}
        state["history"].append(record)
        if ((step + 1) % config.eval_every == 0 or step + 1 == config.steps) and valset:
            check = {"step": step + 1, **validate(designer, team, valset, metric, normaliser)}
            state["validation"].append(check)
            if state["best"] is None or check["utility"] > state["best"]["utility"]:
                state["best"] = {**check, "weights": copy_weights(designer.module.state_dict())}
                state["best"]["extra"] = designer.extra_state()
        state["step"] = step + 1
        record["seconds"] = time.perf_counter() - began  # rollouts, update and any validation
        state["seconds"] += record["seconds"]
        if out is not None:
            state |= {
                "weights": designer.module.state_dict(),
                "extra": designer.extra_state(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
            }
            save_atomic(state, out / CHECKPOINT)
            (out / "history.json").write_text(json.dumps(_figures(state), indent=2))
        if bar:
            bar.set_postfix(
                util=f"{record['utility']:.3f}", score=f"{record['score']:.2f}", tok=f"{record['tokens']:.0f}"
            )
            bar.update(1)
    if bar:
        bar.close()
    if config.steps == 0 and valset and not state["validation"]:  # nothing to train: report the start
        check = {"step": 0, **validate(designer, team, valset, metric, normaliser)}
        state["validation"].append(check)
        state["best"] = {
            **check,
            "weights": copy_weights(designer.module.state_dict()),
            "extra": designer.extra_state(),
        }
    if state["best"] is not None:
        designer.module.load_state_dict(state["best"]["weights"])
        designer.load_extra_state(state["best"]["extra"])
    designer.seen_ids = sorted(set(designer.seen_ids) | set(ids))
    figures = _figures(state)
    designer.training |= {"normaliser": normaliser, phase: figures}
    return figures


def copy_weights(weights: dict) -> dict:
    """A detached copy of a state dict (the best version so far, kept while training goes on)."""
    return {name: tensor.detach().clone() for name, tensor in weights.items()}


def _figures(state: dict) -> dict:
    """What a run reports: updates, seconds, history, validations and the chosen one (without weights)."""
    best = state["best"]
    chosen = {k: v for k, v in best.items() if k not in ("weights", "extra")} if best else None
    return {
        "updates": state["step"],
        "seconds": state["seconds"],
        "normaliser": state["normaliser"],
        "history": state["history"],
        "validation": state["validation"],
        "chosen": chosen,
    }
