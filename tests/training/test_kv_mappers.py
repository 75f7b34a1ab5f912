"""Fitting and training c2c mappers on tiny random models: the ridge fit, fuser runs (transfer and fusion) that
lower the receiver's loss and keep the checkpoint best on validation, and a killed run that resumes from its
checkpoint to the same weights."""

from dataclasses import replace

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from kvmesh import LocalLM
from kvmesh.config import ConfigError
from kvmesh.evals.studies.latent import LatentStudyConfig
from kvmesh.evals.studies.latent_teams import study_agents
from kvmesh.kvcomm.c2c.capture import ContextTooLongError
from kvmesh.kvcomm.c2c.mappers.base import load_mapper
from kvmesh.kvcomm.c2c.mappers.fuser import Fuser
from kvmesh.kvcomm.c2c.mappers.quality import MapperQualityError
from kvmesh.kvcomm.c2c.mappers.residual import ResidualFuser
from kvmesh.kvcomm.c2c.mappers.ridge import RidgeMapper
from kvmesh.training.kv_mappers import FitConfig, TrainConfig, fit, sender_context, tasks, train
from kvmesh.training.kv_mappers.examples import build_examples
from kvmesh.training.kv_mappers.fit import mapper_config
from kvmesh.training.kv_mappers.train import MAPPERS, Losses


@pytest.fixture(scope="module")
def gemma(tiny_gemma3, gemma_tokenizer):
    """A tiny random Gemma 3 (3 layers, sliding window 256) with Gemma 3's own tokenizer."""
    layers = ["sliding_attention", "sliding_attention", "full_attention"]
    return LocalLM(tiny_gemma3(gemma_tokenizer, layers, 256, initializer_range=0.3), gemma_tokenizer, "tiny-gemma3")


def test_fit_saves_a_ridge_mapper_with_its_quality_and_data(gemma, tiny, tmp_path):
    config = FitConfig(out=str(tmp_path / "ridge"), texts=6, validation=2, threshold=-1.0, margin=-2.0)
    lines = []
    _, quality = fit(config, gemma, tiny, progress=lines.append)
    loaded = load_mapper(tmp_path / "ridge")
    assert isinstance(loaded, RidgeMapper) and loaded.config.direction == "tiny-gemma3 -> tiny-random"
    assert loaded.config.quality["per_layer"] == list(quality.per_layer) and len(quality.per_layer) == 2
    data = loaded.config.data
    assert (data["task"], data["split"], data["texts"]) == ("infoqa", "train", 6) and data["tokens"] > 100
    assert not set(data["train_ids"]) & set(data["validation_ids"])
    assert all("-train-" in i for i in data["train_ids"]) and all("-validation-" in i for i in data["validation_ids"])
    assert any(line.startswith("quality: mean") for line in lines)
    with pytest.raises(MapperQualityError, match=r"threshold 1\.500"):
        fit(FitConfig(out=str(tmp_path / "refused"), texts=6, validation=2, threshold=1.5), gemma, tiny, print)
    assert not (tmp_path / "refused").exists()  # a refused mapper is not saved


def test_a_mapper_fitted_on_a_file_learns_from_its_train_split_and_is_checked_on_its_validation_split(
    gemma, tiny, tmp_path
):
    from kvmesh.evals.benchmarks import InfoQA
    from kvmesh.evals.benchmarks.infoqa import generate

    data = tmp_path / "tasks.jsonl"
    data.write_text("".join(task.to_json() + "\n" for task in generate(40, "test", seed=2)))
    config = FitConfig(
        out=str(tmp_path / "ridge"), data_path=str(data), texts=6, validation=2, threshold=-1.0, margin=-2.0
    )
    fit(config, gemma, tiny, progress=lambda line: None)
    recorded = load_mapper(tmp_path / "ridge").config.data
    train, validation = set(recorded["train_ids"]), set(recorded["validation_ids"])
    assert len(train) == 6 and len(validation) == 2 and not train & validation
    split = {name: {s.id for s in InfoQA(str(data)).samples(name)} for name in ("train", "validation", "test")}
    assert train <= split["train"] and validation <= split["validation"]
    assert not (train | validation) & split["test"]
    with pytest.raises(ConfigError, match=r"validation tasks; .*asks for 99"):
        fit(FitConfig(out=str(tmp_path / "more"), data_path=str(data), texts=6, validation=99), gemma, tiny, print)


def test_a_fuser_trained_on_a_file_records_the_train_and_validation_tasks_it_used(gemma, tiny, tmp_path):
    from kvmesh.evals.benchmarks import InfoQA
    from kvmesh.evals.benchmarks.infoqa import generate

    data = tmp_path / "tasks.jsonl"
    data.write_text("".join(task.to_json() + "\n" for task in generate(40, "test", seed=2)))
    config = replace(_settings(tmp_path / "fuser"), data_path=str(data), data_seed=1, steps=1, checkpoint_every=1)
    fuser = train(config, gemma, tiny, progress=lambda line: None)
    learned, checked = set(fuser.config.data["train_ids"]), set(fuser.config.data["validation_ids"])
    split = {name: {s.id for s in InfoQA(str(data), seed=1).samples(name)} for name in ("train", "validation", "test")}
    assert learned and checked and learned <= split["train"] and checked <= split["validation"]
    assert not (learned | checked) & split["test"]


def test_a_context_longer_than_the_senders_window_is_refused(tiny, tmp_path):
    small = LocalLM(
        Gemma3ForCausalLM(
            Gemma3TextConfig(
                vocab_size=len(tiny.tokenizer),
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
                head_dim=16,
                sliding_window=16,
                layer_types=["sliding_attention", "full_attention"],
            )
        ).eval(),
        tiny.tokenizer,
        "tiny-gemma3-window-16",
    )
    with pytest.raises(ContextTooLongError, match="at most 15 tokens"):
        fit(FitConfig(out=str(tmp_path / "x"), texts=2, validation=1, threshold=-1.0, margin=-2.0), small, tiny, print)


def _settings(out, **changes) -> TrainConfig:
    base = {
        "out": str(out),
        "texts": 4,
        "validation": 2,
        "steps": 8,
        "batch": 2,
        "lr": 1e-2,
        "hidden": 8,
        "checkpoint_every": 4,
        "temperature_end": 0.1,
    }
    return TrainConfig(**(base | changes))


def _training_loss(fuser, gemma, tiny, config) -> float:
    """Mean reply loss over the training examples, gates hard."""
    agents = study_agents(LatentStudyConfig(model=tiny.spec), gemma.spec)
    for agent, model in zip(agents, (gemma, tiny), strict=True):
        agent.model = model
    losses = Losses(config.mode, gemma, tiny, sorted(set(fuser.config.layer_map)))
    return losses.mean(fuser, build_examples(*agents, tasks(config, "train")))


def _fresh(config, gemma, tiny):
    """The fuser `train(config)` starts from (its weights come from the seed)."""
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        learned, checked = tasks(config, "train"), tasks(config, "validation")
        kind = MAPPERS[config.mode].kind
        return MAPPERS[config.mode](mapper_config(config, kind, gemma, tiny, learned, checked, hidden=config.hidden))


def test_training_lowers_the_receivers_answer_loss_and_a_killed_run_resumes(gemma, tiny, tmp_path):
    config = _settings(tmp_path / "full")
    before = _training_loss(_fresh(config, gemma, tiny), gemma, tiny, config)
    lines = []
    fuser = train(config, gemma, tiny, progress=lines.append)
    after = _training_loss(fuser, gemma, tiny, config)
    assert after < before - 0.1, (before, after)
    saved = load_mapper(tmp_path / "full")
    assert isinstance(saved, Fuser)
    quality = saved.config.quality
    assert {"validation_loss", "no_context_loss", "shuffled_loss", "chosen_step", "open_layers"} <= set(quality)
    curve = [h for h in saved.config.data["history"] if "validation" in h]
    assert [h["step"] for h in curve] == [0, 4, 8]  # the untrained fuser is a candidate too
    assert quality["chosen_step"] == min(curve, key=lambda h: (h["validation"], h["step"]))["step"]
    assert saved.config.data["chosen_validation"] == pytest.approx(min(h["validation"] for h in curve))
    assert quality["split"] == "validation (checking half)"  # its recorded losses come from texts that chose nothing
    assert any("validation reply loss: no context" in line for line in lines)
    assert any("open layers" in line for line in lines if line.startswith("checkpoint"))

    def kill_after_the_first_checkpoint(line: str) -> None:
        if line.startswith("checkpoint: step 4"):
            raise KeyboardInterrupt

    killed = _settings(tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        train(killed, gemma, tiny, progress=kill_after_the_first_checkpoint)
    assert not (tmp_path / "killed" / "mapper.json").exists()
    lines = []
    resumed = train(killed, gemma, tiny, progress=lines.append)
    assert "steps 4/8 (resumed)" in lines[0]
    for name, tensor in fuser.tensors().items():
        torch.testing.assert_close(resumed.tensors()[name], tensor, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="other settings \\(lr\\)"):
        train(_settings(tmp_path / "killed", lr=1e-3), gemma, tiny, print)
    with pytest.raises(FileExistsError, match="--resume"):
        train(_settings(tmp_path / "killed", resume=False), gemma, tiny, print)


def test_fusion_training_lowers_the_receivers_loss_with_a_residual_fuser(gemma, tiny, tmp_path):
    config = _settings(tmp_path / "fusion", mode="fusion")
    before = _training_loss(_fresh(config, gemma, tiny), gemma, tiny, config)
    fuser = train(config, gemma, tiny, progress=lambda line: None)
    assert isinstance(fuser, ResidualFuser) and isinstance(load_mapper(tmp_path / "fusion"), ResidualFuser)
    last = load_mapper(
        tmp_path / "fusion" / "checkpoints" / "step-8"
    )  # the run's end (the saved one: best on validation)
    assert _training_loss(last, gemma, tiny, config) < before - 0.1
    assert "shuffled_loss" in fuser.config.quality and fuser.config.data["mode"] == "fusion"  # its content control


def test_sender_contexts_hold_every_shard_and_the_question():
    task = tasks(FitConfig(out="x", texts=1), "train")[0]
    text = sender_context(task)
    assert text.startswith("Your private notes:\n") and text.endswith(f"Question: {task.question}")
    assert all(shard.strip() in text for shard in task.shards)
