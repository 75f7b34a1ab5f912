"""Shared pieces of the benchmark scripts: the task sets, the team under test and the timing flags and figures.

Every script that reports a time or a ratio times its modes with `kvmesh.evals.timing.time_modes` (warm-up calls
first, then `--repeats` rounds, the modes' order rotated each round) and reports the median with the min and max;
a ratio is taken within each round, then summarised.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Sequence

import torch

from kvmesh import Agent, Task, Team, load_model
from kvmesh.evals.timing import Spread, format_spread

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "How many days are there in a week?",
    "What do bees make?",
    "What is 12 plus 30?",
    "Which planet is closest to the sun?",
    "What is the boiling point of water in Celsius?",
    "Name a mammal that can fly.",
    "What language is spoken in Brazil?",
    "How many legs does a spider have?",
    "What is the largest ocean on Earth?",
    "Who wrote Romeo and Juliet?",
    "What gas do plants absorb from the air?",
    "What is the freezing point of water in Fahrenheit?",
    "Name the longest river in Africa.",
    "How many minutes are in an hour?",
]


# Word problems written for these benchmarks: agents reason step by step, as on GSM8K.
WORD_PROBLEMS = [
    "Tom has 3 boxes with 12 apples each. He gives away 9 apples. How many apples does he have left?",
    "A train travels 60 km per hour for 3 hours, then 40 km per hour for 2 hours. How far does it go?",
    "Sara buys 4 notebooks at 3 dollars each and a pen for 2 dollars. She pays with 20 dollars. What is her change?",
    "A class has 28 students. Half of them play football and 5 of those also play chess. How many play only football?",
    "A baker makes 120 rolls and sells them in bags of 8. How many bags can he fill?",
    "Lena reads 15 pages a day. Her book has 240 pages. After 10 days, how many pages are left?",
    "A garden is 12 metres long and 7 metres wide. What is its area in square metres?",
    "Max earns 9 dollars an hour and works 6 hours a day for 5 days. How much does he earn?",
    "There are 5 shelves with 18 books each. 23 books are borrowed. How many books remain on the shelves?",
    "A car uses 6 litres of fuel per 100 km. How many litres does it need for 350 km?",
    "Anna is 4 years older than Ben. Ben is twice as old as Cara, who is 7. How old is Anna?",
    "A shop sells pencils at 25 cents each. How many pencils can you buy with 6 dollars?",
    "A tank holds 500 litres. It is filled at 25 litres per minute. How many minutes to fill it from empty?",
    "Pia has 48 stickers. She gives a quarter to her brother and 10 to a friend. How many does she keep?",
    "A recipe needs 3 eggs for 12 cookies. How many eggs are needed for 60 cookies?",
    "A bus has 40 seats. 26 people get on, then 9 get off and 15 get on. How many seats are empty?",
]
WORKLOADS = {"trivia": QUESTIONS, "math": WORD_PROBLEMS}


def tasks(count: int, workload: str = "math") -> list[Task]:
    questions = WORKLOADS[workload]
    return [Task(questions[i % len(questions)], id=str(i)) for i in range(count)]


def team(model: str, agents: int, topology: str, max_new_tokens: int, rounds: int = 1) -> Team:
    lm = load_model(model)
    roles = ["math solver", "mathematical analyst", "inspector", "programming expert"]
    members = [
        Agent(
            f"agent_{i + 1}",
            roles[i % 4],
            system_prompt=f"You are the {roles[i % 4]} in a team. Reason step by step, then state the answer.",
            model=lm,
            max_new_tokens=max_new_tokens,
        )
        for i in range(agents)
    ]
    return Team(members, topology, rounds=rounds)  # a preset's rounds read the previous one


def transcripts(results) -> list[list[str]]:
    """Every reply of each team result, in order: what must not change between two ways of running them."""
    return [[m.content for m in r.messages] for r in results]


def emit(result: dict, as_json: bool, lines: list[str]) -> None:
    """Print the figures: one JSON object (with the torch threads they ran on, since times depend on them), or
    the human lines."""
    print(json.dumps(result | {"torch_threads": torch.get_num_threads()}) if as_json else "\n".join(lines))


def _count(least: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value

    return parse


def add_timing_arguments(parser: argparse.ArgumentParser, repeats: int = 3, help_repeats: str | None = None) -> None:
    """--repeats (timed rounds, at least 1) and --warmup (untimed calls of each mode first, 0 or more)."""
    parser.add_argument(
        "--repeats",
        type=_count(1),
        default=repeats,
        help=help_repeats or "timed rounds; each runs every mode once, in an order rotated each round",
    )
    parser.add_argument("--warmup", type=_count(0), default=1, help="untimed calls of each mode before the rounds")


def spread(values: Sequence[float], digits: int = 3) -> dict:
    """Median, min and max of per-round values, with the rounds' values, rounded for a JSON result."""
    summary = Spread.of(values)
    return {
        "median": round(summary.median, digits),
        "min": round(summary.min, digits),
        "max": round(summary.max, digits),
        "rounds": [round(v, digits) for v in values],
    }


def shown(values: Sequence[float], digits: int = 2, unit: str = "") -> str:
    """Per-round values as "median (min-max)", `unit` right after the median (" s", "x")."""
    return format_spread(Spread.of(values), digits, unit)


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(process: subprocess.Popen, url: str, name: str, deadline_s: float) -> subprocess.Popen:
    """`process` once `url` answers; exits naming `name` if it dies or does not answer within `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return process
        except OSError:
            if process.poll() is not None:
                raise SystemExit(f"{name} exited with {process.returncode}") from None
            time.sleep(0.5)
    process.kill()
    raise SystemExit(f"{name} did not start within {deadline_s:g} s")
