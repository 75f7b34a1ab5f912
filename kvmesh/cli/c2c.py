"""`kvmesh c2c fit|train`: mappers for the `c2c` channel between two different models (`kvmesh.training.kv_mappers`).

kvmesh c2c fit --sender gemma3-270m --receiver smollm2-135m --task infoqa --out mappers/ridge
kvmesh c2c train --sender gemma3-270m --receiver smollm2-135m --init mappers/ridge --mode transfer --out mappers/fuser
kvmesh c2c train --sender gemma3-270m --receiver smollm2-135m --init mappers/ridge --mode fusion --out mappers/fusion

`fit` is a closed-form ridge regression (minutes on a CPU) and prints the mapper's per-layer quality: the
cosine between the receiver's attention outputs over mapped and over its own caches, on held-out texts, beside
two controls (the receiver's own cache of another task's text, the mapper on another task's text); a mapper
below --threshold, or less than --margin above the better control, is refused. `train` trains a gated fuser in
the c2c mode it will serve (--mode) on the receiver's reply loss over `bench latent`'s prompts, checkpoints every
--checkpoint-every steps, keeps the checkpoint best on validation and resumes from the last one in --out
(--no-resume refuses to). Either folder is what the c2c channel loads (`kvmesh.kvcomm.c2c.mappers.base.load_mapper`).
"""

from __future__ import annotations

import argparse
import sys

from kvmesh.agents.usage import format_rows
from kvmesh.cli.flags import add_config_arguments, config_from_args
from kvmesh.training.kv_mappers import FitConfig, TrainConfig, fit, train


def _say(line: str) -> None:
    print(f"kvmesh: {line}", file=sys.stderr, flush=True)


def c2c_fit(args: argparse.Namespace) -> int:
    config = config_from_args(FitConfig, args)
    mapper, quality = fit(config, progress=_say)
    rows = [
        (str(layer), str(mapper.config.layer_map[layer]), *(f"{c[layer]:.3f}" for c in columns))
        for layer in range(len(quality.per_layer))
        for columns in [(quality.per_layer, quality.wrong_context, quality.shuffled)]
    ]
    header = ("receiver layer", "sender layer", "attention cosine", "wrong context", "shuffled")
    print("\n".join(format_rows([header, *rows])))
    print(
        f"mean {quality.mean:.3f} over {quality.texts} validation texts, {quality.mean - quality.control:.3f} above "
        f"the better control (margin {config.margin}); mapper saved to {config.out}"
    )
    return 0


def c2c_train(args: argparse.Namespace) -> int:
    config = config_from_args(TrainConfig, args)
    fuser = train(config, progress=_say)
    quality = fuser.config.quality
    print(
        f"{fuser.kind} {fuser.config.direction} ({config.mode}): {fuser.parameter_count():,} parameters, chosen at "
        f"step {quality['chosen_step']} on validation: reply loss {quality['validation_loss']:.3f} against "
        f"{quality['no_context_loss']:.3f} reading nothing"
        + (f" and {quality['shuffled_loss']:.3f} reading another task's" if "shuffled_loss" in quality else "")
        + f"; open layers {fuser.open_layers()}; saved to {config.out}"
    )
    return 0


def add_parser(commands) -> None:
    c2c = commands.add_parser("c2c", help="fit or train a mapper for the c2c channel (cache transfer across models)")
    kinds = c2c.add_subparsers(dest="kind", required=True)
    fitting = kinds.add_parser("fit", help="a closed-form ridge mapper, with its per-layer quality")
    add_config_arguments(fitting, FitConfig)
    fitting.set_defaults(handler=c2c_fit)
    training = kinds.add_parser(
        "train", help="a gated fuser for one c2c mode, trained on the receiver's reply loss (resumable)"
    )
    add_config_arguments(training, TrainConfig)
    training.set_defaults(handler=c2c_train)
