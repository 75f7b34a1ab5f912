"""`kvmesh c2c fit|train` on tiny random models: a sender saved as a local folder, the tiny-random receiver."""

import pytest

from kvmesh.cli import main
from kvmesh.kvcomm.c2c.mappers.base import check_models, load_mapper
from kvmesh.kvcomm.c2c.mappers.fuser import Fuser
from kvmesh.kvcomm.c2c.mappers.ridge import RidgeMapper


@pytest.fixture(scope="module")
def gemma_folder(tmp_path_factory, tiny_gemma3, gemma_tokenizer):
    """A tiny random Gemma 3 with Gemma 3's tokenizer, saved as a model folder."""
    folder = tmp_path_factory.mktemp("tiny-gemma3")
    tiny_gemma3(gemma_tokenizer, ["sliding_attention", "full_attention"], 256).save_pretrained(folder)
    gemma_tokenizer.save_pretrained(folder)
    return folder


def test_fit_then_train_from_the_command_line(gemma_folder, tmp_path, capsys):
    ridge, fuser = tmp_path / "ridge", tmp_path / "fuser"
    pair = ["--sender", str(gemma_folder), "--receiver", "tiny-random", "--texts", "4", "--validation", "2"]
    assert main(["c2c", "fit", *pair, "--out", str(ridge), "--threshold", "-1", "--margin", "-2"]) == 0
    printed = capsys.readouterr().out
    assert "receiver layer" in printed and "attention cosine" in printed and f"saved to {ridge}" in printed
    mapper = load_mapper(ridge)
    assert isinstance(mapper, RidgeMapper)
    check_models(mapper, str(gemma_folder), "tiny-random")
    train = ["c2c", "train", *pair, "--out", str(fuser), "--init", str(ridge), "--steps", "2", "--hidden", "8"]
    assert main([*train, "--checkpoint-every", "1", "--batch", "1"]) == 0
    trained = load_mapper(fuser)
    assert isinstance(trained, Fuser) and trained.config.data["init"] == str(ridge)
    assert sorted(p.name for p in (fuser / "checkpoints").iterdir()) == ["step-1", "step-2"]
    assert main([*train, "--checkpoint-every", "1", "--batch", "1", "--no-resume"]) == 2
    assert "resume it (--resume) or pick another --out" in capsys.readouterr().err


def test_bad_flags_are_refused(gemma_folder, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["c2c", "fit", "--sender", str(gemma_folder)])  # no --out
    with pytest.raises(SystemExit):
        main(["c2c", "fit", "--out", str(tmp_path), "--task", "gsm8k"])
    assert "invalid choice: 'gsm8k'" in capsys.readouterr().err
    assert main(["c2c", "train", "--out", str(tmp_path), "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err
