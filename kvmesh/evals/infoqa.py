"""InfoQA: information-asymmetric question answering, where only communication can answer the question.

A seeded generator invents people and places, writes facts about them (where each person lives, their job,
pet and sibling), and splits the facts into private shards, one per agent. A question needs 1 or 2 facts
(hops); for 2 hops, the facts go to different agents ("In which city does Mira's brother live?" needs "Mira's
brother is Tavo." and "Tavo lives in Orvik."). The remaining facts are distractors.

Splits are disjoint by construction: train, validation and test draw their people and places from separate
parts of one fixed pool of invented names (the same for every seed), so no entity appears in two splits, even
across seeds; the seed only chooses the tasks.

Difficulty: `people` (more people, more distractors), `facts_per_agent` (longer shards), `hops` (1 or 2),
`agents` (how many shards the facts are spread over).

Tasks also load from JSONL (`id`, `question`, `answer`, `shards`: a list of strings, one per agent), so anyone
can bring their own. Metrics: exact match and token F1 after normalisation (lowercase, no punctuation or
articles), as in SQuAD.
"""

from __future__ import annotations

import json
import random
import re
import string
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from kvmesh.evals.jsonl import read_jsonl

SPLITS = ("train", "validation", "test")
SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ra",
    "te",
    "vo",
    "si",
    "ba",
    "nu",
    "de",
    "fa",
    "go",
    "li",
    "pe",
    "zu",
    "ro",
    "ta",
    "ne",
]
PLACE_ENDINGS = ["vik", "ford", "heim", "mar", "dale", "port", "stad", "bury"]
JOBS = ["baker", "pilot", "nurse", "farmer", "painter", "teacher", "plumber", "chemist", "tailor", "sailor"]
PETS = ["cat", "dog", "parrot", "rabbit", "turtle", "hamster", "goat", "pony"]
_SIBLINGS = ["sister", "brother"]


@dataclass(frozen=True)
class InfoQATask:
    id: str
    question: str
    answer: str
    shards: list[str]
    hops: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass(frozen=True)
class Difficulty:
    """How hard generated tasks are.

    Args:
        people: invented people per task; each gets several facts, so more people means more distractors.
        facts_per_agent: facts in each agent's shard (the needed ones included).
        hops: 1 (one fact answers) or 2 (a sibling fact, then a fact about the sibling).
        agents: number of shards.
    """

    people: int = 4
    facts_per_agent: int = 4
    hops: int = 1
    agents: int = 2

    def __post_init__(self) -> None:
        if self.hops not in (1, 2):
            raise ValueError(f"hops must be 1 or 2, got {self.hops}")
        if self.agents < self.hops:
            raise ValueError(f"{self.hops}-hop questions put their facts with different agents: agents >= {self.hops}")
        if self.people < 2 or self.facts_per_agent < self.hops:
            raise ValueError("need at least 2 people and as many facts per agent as hops")


def invented_name(rng: random.Random, endings: list[str] | None = None) -> str:
    """A made-up name of 2 or 3 syllables (a place name when `endings` are given: "Lorovik")."""
    stem = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3))))
    return (stem + rng.choice(endings) if endings else stem).capitalize()


def _name_pool(rng: random.Random, count: int, endings: list[str] | None = None) -> list[str]:
    names: set[str] = set()
    while len(names) < count:
        names.add(invented_name(rng, endings))
    return sorted(names)


def _split_pool(pool: list[str], split: str) -> list[str]:
    """The third of a fixed shuffle of `pool` that belongs to `split`."""
    shuffled = list(pool)
    random.Random("infoqa-splits").shuffle(shuffled)
    third = len(shuffled) // 3
    index = SPLITS.index(split)
    return shuffled[index * third : (index + 1) * third]


def _person_facts(person: str, world: dict) -> list[tuple[str, str, str]]:
    """(relation, subject, sentence) facts about one person."""
    info = world[person]
    facts = [
        ("city", person, f"{person} lives in {info['city']}."),
        ("job", person, f"{person} works as a {info['job']}."),
        ("pet", person, f"{person} has a {info['pet']}."),
    ]
    if info.get("sibling"):
        facts.append(("sibling", person, f"{person}'s {info['sibling_kind']} is {info['sibling']}."))
    return facts


def _question(relation: str, subject: str) -> str:
    return {
        "city": f"In which city does {subject} live?",
        "job": f"What is {subject}'s job?",
        "pet": f"What pet does {subject} have?",
    }[relation]


def generate(count: int, split: str = "test", seed: int = 0, difficulty: Difficulty | None = None) -> list[InfoQATask]:
    """`count` tasks of `split`; the same (count, split, seed, difficulty) always gives the same tasks."""
    if split not in SPLITS:
        raise ValueError(f"InfoQA split must be one of {SPLITS}, got {split!r}")
    level = difficulty or Difficulty()
    pool_rng = random.Random("infoqa-pool")  # fixed: splits must not share entities whatever the seed
    people_pool = _split_pool(_name_pool(pool_rng, 600), split)
    place_pool = _split_pool(_name_pool(pool_rng, 240, PLACE_ENDINGS), split)
    rng = random.Random(f"infoqa-{split}-{seed}-{level}")
    return [_one_task(rng, f"infoqa-{split}-{seed}-{i}", people_pool, place_pool, level) for i in range(count)]


def _one_task(rng: random.Random, task_id: str, people_pool, place_pool, level: Difficulty) -> InfoQATask:
    people = rng.sample(people_pool, level.people)
    world = {p: {"city": rng.choice(place_pool), "job": rng.choice(JOBS), "pet": rng.choice(PETS)} for p in people}
    subject = people[0]
    if level.hops == 2:  # the subject's sibling is another person of this task
        sibling = people[1]
        world[subject] |= {"sibling": sibling, "sibling_kind": rng.choice(_SIBLINGS)}
    relation = rng.choice(["city", "job", "pet"])
    if level.hops == 1:
        needed = [next(f for f in _person_facts(subject, world) if f[0] == relation)]
        question, answer = _question(relation, subject), world[subject][relation]
    else:
        kind, sibling = world[subject]["sibling_kind"], world[subject]["sibling"]
        needed = [
            next(f for f in _person_facts(subject, world) if f[0] == "sibling"),
            next(f for f in _person_facts(sibling, world) if f[0] == relation),
        ]
        question = _question(relation, f"{subject}'s {kind}")
        answer = world[sibling][relation]
    needed_sentences = [f[2] for f in needed]
    distractors = [f[2] for p in people for f in _person_facts(p, world) if f[2] not in needed_sentences]
    rng.shuffle(distractors)
    shards: list[list[str]] = [[] for _ in range(level.agents)]
    holders = rng.sample(range(level.agents), len(needed))  # needed facts live with different agents
    for holder, sentence in zip(holders, needed_sentences, strict=True):
        shards[holder].append(sentence)
    for shard in shards:
        while len(shard) < level.facts_per_agent and distractors:
            shard.append(distractors.pop())
        rng.shuffle(shard)
    return InfoQATask(task_id, question, answer, [" ".join(s) for s in shards], level.hops)


# --- bring your own -------------------------------------------------------------------------------------------


def load_jsonl(path: str | Path) -> list[InfoQATask]:
    """Tasks from a JSONL file of {"id", "question", "answer", "shards": [str, ...]}; errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"InfoQA file {path} does not exist")
    tasks, seen = [], set()
    for where, row in read_jsonl(path):
        if not isinstance(row, dict):
            raise ValueError(f"{where}: each line must be a JSON object")
        missing = [k for k in ("id", "question", "answer", "shards") if k not in row]
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}; need id, question, answer, shards")
        if not all(isinstance(row[k], str) and row[k].strip() for k in ("question", "answer")):
            raise ValueError(f"{where}: 'question' and 'answer' must be non-empty strings")
        shards = row["shards"]
        if not isinstance(shards, list) or not shards or not all(isinstance(s, str) for s in shards):
            raise ValueError(f"{where}: 'shards' must be a non-empty list of strings, one per agent")
        task_id = str(row["id"])
        if task_id in seen:
            raise ValueError(f"{where}: duplicate id {task_id!r}")
        seen.add(task_id)
        tasks.append(InfoQATask(task_id, row["question"], row["answer"], shards, int(row.get("hops", 1))))
    if not tasks:
        raise ValueError(f"{path}: no tasks in the file")
    return tasks


# --- scoring --------------------------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str | None, gold: str) -> bool:
    return prediction is not None and normalize_answer(prediction) == normalize_answer(gold)


def token_f1(prediction: str | None, gold: str) -> float:
    predicted = normalize_answer(prediction or "").split()
    expected = normalize_answer(gold).split()
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)
