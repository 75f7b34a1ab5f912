"""c2c training examples: the prompts the bench's turns really read, the target reply, and losses whose closed
gates and fresh residuals change nothing."""

import pytest
import torch

from kvmesh.evals.benchmarks.infoqa import InfoQA, InfoQATask, generate
from kvmesh.evals.studies.latent import LatentStudyConfig
from kvmesh.evals.studies.latent_teams import SENDER, pair_team, study_agents, tasks_for
from kvmesh.kvcomm.c2c.mappers.base import KVGeometry, MapperConfig
from kvmesh.kvcomm.c2c.mappers.fuser import Fuser
from kvmesh.kvcomm.c2c.mappers.residual import ResidualFuser
from kvmesh.training.kv_mappers.examples import build_examples, end_of_turn, target_reply
from kvmesh.training.kv_mappers.train import Losses

SMALL = LatentStudyConfig(model="tiny-random", message_tokens=3, answer_tokens=3)


def _examples(tiny, count=2):
    samples, infoqa = InfoQA(None, 0).samples("train")[:count], generate(count, "train", 0)
    assert [s.id for s in samples] == [t.id for t in infoqa]  # the same tasks, as the bench and training see them
    return samples, build_examples(*study_agents(SMALL), infoqa)


def test_examples_hold_the_very_prompts_the_bench_turns_read(tiny):
    samples, examples = _examples(tiny)
    results = pair_team(SMALL, "kv-select").run_batch(tasks_for(samples, SENDER))
    for example, result in zip(examples, results, strict=True):
        sender, receiver = result.messages
        assert example.sender_ids == tiny.encode_prompt(sender.response_metadata["prompt"])
        assert example.prompt_ids == tiny.encode_prompt(receiver.response_metadata["prompt"])
        lo, hi = example.task_span
        assert tiny.decode(example.prompt_ids[lo:hi]) == example.task_text
        lo, hi = example.sender_task
        assert tiny.decode(example.sender_ids[lo:hi]) == example.task_text


def test_the_target_reply_is_the_worked_examples_format_and_ends_the_turn(tiny):
    task = InfoQATask("x", "What is Nete's job?", "farmer", ["Teronu has a goat. Nete works as a farmer.", "Ko is."])
    assert target_reply(task) == "Nete works as a farmer.\nAnswer: farmer"
    (example,) = build_examples(*study_agents(SMALL), [task])
    assert tiny.decode(example.reply_ids) == "Nete works as a farmer.\nAnswer: farmer<|im_end|>"
    assert end_of_turn(tiny) == [tiny.tokenizer.convert_tokens_to_ids("<|im_end|>")]


@torch.no_grad()
def test_a_closed_transfer_gate_reads_as_nothing_and_an_open_one_does_not(tiny):
    _, examples = _examples(tiny, 1)
    geometry = KVGeometry.of(tiny)
    fuser = Fuser(MapperConfig("fuser", "tiny-random", "tiny-random", geometry, geometry, hidden=8)).eval()
    losses = Losses("transfer", tiny, tiny, list(range(geometry.layers)))
    alone = float(losses(None, examples[0]))
    fuser.gate_logits.fill_(-1.0)
    assert float(losses(fuser, examples[0])) == pytest.approx(alone, abs=1e-4)  # masked: not zero rows to attend
    fuser.gate_logits.fill_(1.0)
    assert abs(float(losses(fuser, examples[0])) - alone) > 1e-2


@torch.no_grad()
def test_a_fresh_residual_fuser_leaves_the_fusion_loss_as_reading_nothing(tiny):
    _, examples = _examples(tiny, 1)
    geometry = KVGeometry.of(tiny)
    fuser = ResidualFuser(MapperConfig("residual", "tiny-random", "tiny-random", geometry, geometry, hidden=8))
    losses = Losses("fusion", tiny, tiny, list(range(geometry.layers)))
    assert float(losses(fuser.eval(), examples[0])) == float(losses(None, examples[0]))


def test_a_gate_annealed_shut_keeps_the_training_gradient_finite(tiny):
    _, examples = _examples(tiny, 1)
    geometry = KVGeometry.of(tiny)
    fuser = Fuser(MapperConfig("fuser", "tiny-random", "tiny-random", geometry, geometry, hidden=8)).train()
    losses = Losses("transfer", tiny, tiny, list(range(geometry.layers)))
    with torch.no_grad():
        fuser.gate_logits.copy_(torch.tensor([-200.0, 0.0]))
    fuser.generator = torch.Generator().manual_seed(0)  # the first gate underflows to exactly 0, the second is soft
    loss = losses(fuser, examples[0])
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in fuser.parameters() if p.grad is not None)


def test_gates_learn_fast_enough_to_cross_zero_in_a_run(tiny):
    """Gate logits start at 2 (open) and must be able to cross 0 within a run: with their own learning rate they
    move by units in a short run (and the loss falls), while at the projections' rate they could not move by 0.1."""
    from kvmesh.training.kv_mappers.train import TrainConfig, optimizer_for

    _, examples = _examples(tiny, 1)
    geometry = KVGeometry.of(tiny)
    torch.manual_seed(0)
    fuser = Fuser(MapperConfig("fuser", "tiny-random", "tiny-random", geometry, geometry, hidden=8))
    losses = Losses("transfer", tiny, tiny, list(range(geometry.layers)))
    moved = {}
    for gate_lr in (1e-3, 0.5):
        trained = Fuser(fuser.config)
        trained.load_state_dict(fuser.state_dict())
        config = TrainConfig(out="unused", steps=30, lr=1e-9, gate_lr=gate_lr, validation=2)
        optimizer, schedule = optimizer_for(trained, config)
        trained.train()
        trained.generator = torch.Generator().manual_seed(0)
        first = last = None
        for _ in range(config.steps):
            optimizer.zero_grad()
            loss = losses(trained, examples[0])
            loss.backward()
            optimizer.step()
            schedule.step()
            first, last = first if first is not None else float(loss), float(loss)
        moved[gate_lr] = float((trained.gate_logits - fuser.gate_logits).abs().max())
        assert gate_lr < 0.1 or last < first  # the gates alone lower the loss
    assert moved[1e-3] < 0.1 < 1.0 < moved[0.5], moved
