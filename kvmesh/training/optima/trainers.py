"""One iteration's weight update: TRL's `SFTTrainer` or `DPOTrainer` training a peft LoRA adapter on a frozen base.

    losses = train_sft(examples, settings, out)      # examples: {"input_ids", "labels"} (others' tokens -100)
    losses = train_dpo(pairs, settings, out)         # pairs: {"prompt_ids", "chosen_ids", "rejected_ids"}
    out/adapter/                                      # adapter_config.json + adapter_model.safetensors

Both take pre-tokenized data, built by kvmesh from the ids each model really read and wrote (`sft_data`,
`dpo_data`), so no chat template is applied again: SFT labels arrive masked; DPO gets its prompt and its two
completions as ids (TRL would otherwise re-tokenize text, which need not split the same way).

An iteration starts from the previous iteration's adapter (`init_adapter`) or from a fresh LoRA. DPO's reference
is `reference`: "initial" (the base model, adapter disabled: the policy before any training) or "previous" (a
frozen copy of the adapter the iteration starts from).

The base model is loaded fresh from its files for training, never taken from `load_model`'s cache: training
must not touch the weights that teams in this process serve. CPU settings: fp32 (`bf16=False`, `use_cpu`), no
gradient checkpointing, `HF_HUB_OFFLINE` (TRL looks at the hub when a trainer is made). Caveat: needs the
`train` extra (`pip install 'kvmesh[train]'`: trl, peft, datasets); without it, a clear `ImportError` says so.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REFERENCES = ("initial", "previous")
ADAPTER = "adapter"


@dataclass
class LoraSettings:
    """How one iteration trains its LoRA adapter.

    Args:
        base: the base model (alias, folder or Hugging Face id); its weights stay frozen.
        rank: LoRA rank.
        alpha: LoRA scaling numerator (the update is scaled by alpha / rank).
        dropout: dropout on the LoRA input.
        target_modules: the linear layers that get LoRA weights.
        learning_rate: the optimiser's learning rate.
        epochs: passes over the iteration's data.
        batch_size: examples per optimiser step.
        beta: DPO's inverse temperature (how far the policy may move from its reference).
        reference: DPO's reference policy: "initial" (the base model) or "previous" (the adapter the iteration
            starts from, frozen).
        seed: seeds LoRA's initialisation and the data order.
    """

    base: str = "smollm2-135m"
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    learning_rate: float = 2e-4
    epochs: int = 1
    batch_size: int = 8
    beta: float = 0.1
    reference: str = "initial"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}, got {self.reference!r}")
        for name in ("rank", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be above 0, got {self.learning_rate}")


def _require_training_stack():
    """trl, peft and datasets, or an ImportError saying how to install them."""
    try:
        import datasets
        import peft
        import trl
    except ImportError as error:
        raise ImportError(
            f"Optima training needs trl, peft and datasets ({error.name} is missing): pip install 'kvmesh[train]'"
        ) from error
    return datasets, peft, trl


def _base_model(spec: str):
    """A fresh, trainable fp32 copy of the base model and its tokenizer (never the cached inference model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kvmesh.llm.registry import locate_model

    source = locate_model(spec)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    import torch

    return AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32), tokenizer


def _policy(settings: LoraSettings, init_adapter: str | None):
    """(model, peft config or None, tokenizer): a fresh LoRA on the base, or the previous adapter, trainable."""
    _, peft, _ = _require_training_stack()
    model, tokenizer = _base_model(settings.base)
    if init_adapter is not None:
        return peft.PeftModel.from_pretrained(model, init_adapter, is_trainable=True), None, tokenizer
    config = peft.LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    return model, config, tokenizer


def _common_args(settings: LoraSettings, out: Path, rows: int) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # TRL asks the hub about the model when a trainer is made
    return {
        "output_dir": str(out / "trainer"),
        "num_train_epochs": settings.epochs,
        "per_device_train_batch_size": min(settings.batch_size, rows),
        "learning_rate": settings.learning_rate,
        "bf16": False,
        "use_cpu": True,
        "gradient_checkpointing": False,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "seed": settings.seed,
        "disable_tqdm": True,
    }


@contextlib.contextmanager
def _quiet():
    """TRL's configs set `gradient_checkpointing`, which transformers 5 renamed; the setting is still read."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
        yield


def _fit(trainer) -> list[float]:
    """Train quietly (kvmesh reports progress itself); returns the logged training losses."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout when tqdm is off
    with _quiet():
        trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def train_sft(examples: Sequence[dict], settings: LoraSettings, out: str | Path, init_adapter: str | None = None):
    """Train the LoRA adapter on masked examples; saves it to `out/adapter`; returns the logged training losses."""
    if not examples:
        raise ValueError("SFT needs at least one example: no rollout was kept (lower the selection threshold)")
    datasets, _, trl = _require_training_stack()
    out = Path(out)
    with _quiet():
        model, peft_config, tokenizer = _policy(settings, init_adapter)
    data = datasets.Dataset.from_list([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
    with _quiet():
        args = trl.SFTConfig(**_common_args(settings, out, len(examples)), max_length=None)
    with _quiet():
        trainer = trl.SFTTrainer(
            model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=peft_config
        )
    losses = _fit(trainer)
    trainer.model.save_pretrained(out / ADAPTER)
    return losses


def _pretokenized_dpo_trainer(trl):
    class PretokenizedDPOTrainer(trl.DPOTrainer):
        """DPO on ids kvmesh built from what the model read and wrote: no re-tokenization of text."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    return PretokenizedDPOTrainer


def train_dpo(pairs: Sequence[dict], settings: LoraSettings, out: str | Path, init_adapter: str | None = None):
    """Train the LoRA adapter on preference pairs against `settings.reference`; saves it to `out/adapter`;
    returns the logged training losses."""
    if not pairs:
        raise ValueError("DPO needs at least one preference pair: no branched turn had a clear reward gap")
    datasets, _, trl = _require_training_stack()
    out = Path(out)
    with _quiet():
        model, peft_config, tokenizer = _policy(settings, init_adapter)
    # "previous": TRL freezes a copy of the loaded adapter as the reference; "initial": the base model itself
    reference = None
    if init_adapter is not None and settings.reference == "initial":
        reference = _base_model(settings.base)[0]
    columns = ("prompt_ids", "chosen_ids", "rejected_ids")
    data = datasets.Dataset.from_list([{name: list(pair[name]) for name in columns} for pair in pairs])
    with _quiet():
        args = trl.DPOConfig(**_common_args(settings, out, len(pairs)), beta=settings.beta, max_length=None)
        trainer = _pretokenized_dpo_trainer(trl)(
            model=model,
            ref_model=reference,
            args=args,
            train_dataset=data,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    losses = _fit(trainer)
    trainer.model.save_pretrained(out / ADAPTER)
    return losses
