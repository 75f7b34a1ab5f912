"""`kvmesh c2c fit|train`: mappers for the `c2c` channel between two different models (`kvmesh.training.kv_mappers`).

kvmesh c2c fit --sender gemma3-270m --receiver smollm2-135m --task infoqa --out mappers/ridge
kvmesh c2c train --sender gemma3-270m --receiver smollm2-135m --init mappers/ridge --steps 600 --out mappers/fuser

`fit` is a closed-form ridge regression (minutes on a CPU) and prints the mapper's per-layer quality: the
cosine between the receiver's attention outputs over mapped and over its own caches, on held-out texts; a
mapper below --threshold is refused. `train` trains C2C's fuser on the receiver's answer loss, checkpoints
every --checkpoint-every steps and resumes from the last checkpoint in --out (--no-resume refuses to). Either
folder is what the c2c channel loads (`kvmesh.kvcomm.c2c.mappers.base.load_mapper`).
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
        (str(layer), str(mapper.config.layer_map[layer]), f"{cosine:.3f}")
        for layer, cosine in enumerate(quality.per_layer)
    ]
    print("\n".join(format_rows([("receiver layer", "sender layer", "attention cosine"), *rows])))
    print(f"mean {quality.mean:.3f} over {quality.texts} validation texts; mapper saved to {config.out}")
    return 0


def c2c_train(args: argparse.Namespace) -> int:
    config = config_from_args(TrainConfig, args)
    fuser = train(config, progress=_say)
    print(
        f"fuser {fuser.config.direction}: {fuser.parameter_count():,} parameters, open gates "
        f"{fuser.open_layers()}; saved to {config.out}"
    )
    return 0


def add_parser(commands) -> None:
    c2c = commands.add_parser("c2c", help="fit or train a mapper for the c2c channel (cache transfer across models)")
    kinds = c2c.add_subparsers(dest="kind", required=True)
    fitting = kinds.add_parser("fit", help="a closed-form ridge mapper, with its per-layer quality")
    add_config_arguments(fitting, FitConfig)
    fitting.set_defaults(handler=c2c_fit)
    training = kinds.add_parser("train", help="C2C's fuser, trained on the receiver's answer loss (resumable)")
    add_config_arguments(training, TrainConfig)
    training.set_defaults(handler=c2c_train)
