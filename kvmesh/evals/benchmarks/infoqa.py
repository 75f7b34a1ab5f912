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

Tasks also load from JSONL (`id`: a non-empty string or an integer, unique; `question` and `answer`: non-empty
strings; `shards`: a list of strings, one per agent; optional `hops`: an integer >= 1; optional `split`: train,
validation or test), so anyone can bring their own; a bad line is refused with its `path:line`, the field, and
what was expected. A file's splits are its lines' `split` fields, or (when no line has one) a hash of each id and
the seed (`splits.py`); scoring a file reads every task in it (`all`) unless a split is asked for, since a
user's held-out file is all test, while loops that learn read its train and validation splits.

Metrics: exact match of the short answer (after the last "Answer:", else the first line) and token F1 after
normalisation (lowercase, no punctuation or articles), as in SQuAD.

Team: members holding one shard each, and a decision maker. They also get one worked example each
(`Agent.examples`), in the exact layout of their real prompts: SmolLM2-135M ignores "End with: Answer: X" but
copies the format of an example turn. Designers train on the generator's train split and validate on its
validation split.
"""

from __future__ import annotations

import json
import random
import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from kvmesh.agents.prompts import DECISION_INSTRUCTION, Inbound, user_turn
from kvmesh.agents.task import Task
from kvmesh.evals.benchmarks.base import (
    DECISION_MAKER,
    SOLO,
    Benchmark,
    BenchmarkOptions,
    Sample,
    Score,
    answer_line,
    check_design_sizes,
)
from kvmesh.evals.benchmarks.splits import ALL, SPLITS, SplitRule, assign_splits, check_split
from kvmesh.evals.jsonl import field_error, read_jsonl, shown
from kvmesh.graph.edge import DECISION

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
    split: str | None = None  # a file line's own split, when it gives one

    def to_json(self) -> str:
        row = asdict(self)
        if row["split"] is None:
            del row["split"]
        return json.dumps(row)


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


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true/false are not numbers


def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


# field -> (accepts the value, what is expected, in the error's words); "hops" alone is optional (default 1)
FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "id": (lambda v: _is_text(v) or _is_int(v), "a non-empty string or an integer"),
    "question": (_is_text, "a non-empty string"),
    "answer": (_is_text, "a non-empty string"),
    "shards": (
        lambda v: isinstance(v, list) and bool(v) and all(isinstance(s, str) for s in v),
        "a non-empty list of strings, one per agent",
    ),
    "hops": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "split": (lambda v: v in SPLITS, f"one of {', '.join(SPLITS)}"),
}
REQUIRED = ("id", "question", "answer", "shards")


def _task_from_row(where: str, row: object) -> InfoQATask:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: each line must be a JSON object, got {shown(row)}")
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}; need {', '.join(REQUIRED)} (optionally hops, split)")
    for name, (accepts, expected) in FIELDS.items():
        if name in row and not accepts(row[name]):
            raise field_error(where, name, expected, row[name])
    # an integer id is kept as its decimal string, so 7 and "7" are the same task (and a duplicate)
    task_id = str(row["id"])
    return InfoQATask(task_id, row["question"], row["answer"], row["shards"], row.get("hops", 1), row.get("split"))


def load_jsonl(path: str | Path) -> list[InfoQATask]:
    """Tasks from a JSONL file of {"id", "question", "answer", "shards": [str, ...], "hops" and "split" (optional)}.

    Every bad line is a ValueError naming `path:line`, the field, what it holds and what is expected; ids must be
    unique. Other keys are ignored (a file may carry its own metadata), so a misspelt optional "hops" is not
    caught.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"InfoQA file {path} does not exist")
    tasks, seen = [], set()
    for where, row in read_jsonl(path):
        task = _task_from_row(where, row)
        if task.id in seen:
            raise ValueError(f"{where}: duplicate id {task.id!r}")
        seen.add(task.id)
        tasks.append(task)
    if not tasks:
        raise ValueError(f"{path}: no tasks in the file")
    return tasks


def file_splits(tasks: list[InfoQATask], path: str | Path, seed: int = 0) -> tuple[list[str], str]:
    """Each task's split (its own `split` field, else the hash of its id and `seed`) and which rule gave them."""
    return assign_splits([t.id for t in tasks], [t.split for t in tasks], seed, str(path))


def file_tasks(path: str | Path, split: str, seed: int = 0) -> list[InfoQATask]:
    """The tasks of `split` in an InfoQA file (`all`: every task), in file order."""
    check_split(split, source=f"InfoQA file {path}")
    tasks = load_jsonl(path)
    if split == ALL:
        return tasks
    splits, _ = file_splits(tasks, path, seed)
    return [task for task, own in zip(tasks, splits, strict=True) if own == split]


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


def short_answer(text: str) -> str:
    """The answer part of a reply: after the last "Answer:", else the first non-empty line."""
    matches = list(re.finditer(r"answer\s*[:：]\s*(.+)", text, flags=re.IGNORECASE))
    if matches:
        return matches[-1].group(1).strip()
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def _contains_words(text: str, phrase: str) -> bool:
    """`phrase` appears in `text` as whole words ("cat" is not in "located")."""
    return bool(phrase) and re.search(rf"(?:^| ){re.escape(phrase)}(?: |$)", text) is not None


# --- the benchmark ---------------------------------------------------------------------------------------------

SHARD_MODES = ("own", "all", "none")
MEMBER = "team member"


def _examples() -> dict[str, tuple[tuple[str, str], ...]]:
    """Worked turns per role (invented names outside the generator's pools). A member answers when its notes
    suffice and otherwise shares the fact it has; the decision maker joins two members' facts."""
    notes = "Ana lives in Rome. Tom has a cat. Tom works as a cook."
    known = user_turn("What is Tom's job?", None, notes, [], None)
    two_hop = "What is the job of Bo's sister?"
    partial = user_turn(two_hop, None, "Bo's sister is Lin. Bo lives in Oslo. Ana has a dog.", [], None)
    messages = [
        Inbound("agent_1", DECISION, "text", "Bo's sister is Lin."),
        Inbound("agent_2", DECISION, "text", "Lin works as a judge."),
    ]
    decision = user_turn(two_hop, None, None, messages, DECISION_INSTRUCTION)
    return {
        MEMBER: ((partial, "Bo's sister is Lin."), (known, "Tom works as a cook.\nAnswer: cook")),
        SOLO: ((known, "Tom works as a cook.\nAnswer: cook"),),
        DECISION_MAKER: ((decision, "Lin works as a judge.\nAnswer: judge"),),
    }


def _terse_examples() -> dict[str, tuple[tuple[str, str], ...]]:
    """The compact protocol's turns: a member that knows the answer gives it alone, one with a needed fact gives
    that fact, one with nothing on the question says so in one word; the decision maker gives the answer alone."""
    (partial, fact), (known, _) = EXAMPLES[MEMBER]
    unrelated = user_turn("What is Tom's job?", None, "Kim has a dog. Kim lives in Paris.", [], None)
    answer = {role: answer_line(reply) for role, ((_, reply), *_) in EXAMPLES.items() if role != MEMBER}
    return {
        MEMBER: ((partial, fact), (known, "Answer: cook"), (unrelated, "Nothing.")),
        SOLO: ((EXAMPLES[SOLO][0][0], answer[SOLO]),),
        DECISION_MAKER: ((EXAMPLES[DECISION_MAKER][0][0], answer[DECISION_MAKER]),),
    }


EXAMPLES = _examples()
TERSE_EXAMPLES = _terse_examples()


class InfoQA(Benchmark):
    """`shards`: "own" (each agent reads only its shard: the benchmark), "all" (every agent reads every
    shard: the ceiling without communication) or "none" (nobody reads any: the floor)."""

    name = "infoqa"
    ROLES = (
        (
            MEMBER,
            "Your private notes hold facts other agents lack. Copy the sentences from your notes and "
            "your team's messages that are about the people in the question. If you know the answer, end with: "
            "Answer: X",
        ),
    )
    DECISION_PROMPT = "Read your team's messages and answer the question with a few words. End with: Answer: X"

    def __init__(
        self,
        data_path: str | None = None,
        seed: int = 0,
        count: int = 200,
        difficulty: Difficulty | None = None,
        shards: str = "own",
    ) -> None:
        if shards not in SHARD_MODES:
            raise ValueError(f"InfoQA shards must be one of {SHARD_MODES}, got {shards!r}")
        self.data_path, self.seed, self.count, self.difficulty = data_path, seed, count, difficulty
        self.shards = shards

    @classmethod
    def from_options(cls, options: BenchmarkOptions) -> InfoQA:
        return cls(options.data_path, options.seed, shards=options.shards)

    def _task(self, t: InfoQATask) -> Task:
        if self.shards == "all":
            return Task(t.question, id=t.id, context="\n".join(t.shards), extract_answer=short_answer)
        shards = t.shards if self.shards == "own" else None
        return Task(t.question, id=t.id, shards=shards, extract_answer=short_answer)

    def generate(self, split: str) -> list[InfoQATask]:
        """`self.count` generated tasks of `split` (subclasses write other domains)."""
        return generate(self.count, split, self.seed, self.difficulty)

    def samples(self, split: str) -> list[Sample]:
        if self.data_path:
            tasks = file_tasks(self.data_path, split, self.seed)
        else:
            check_split(split, SPLITS, f"the {self.name} generator (a file adds {ALL!r})")
            tasks = self.generate(split)
        return [Sample(t.id, self._task(t), t.answer, f"Answer: {t.answer}") for t in tasks]

    @classmethod
    def default_split(cls, data_path: str | None = None) -> str:
        return ALL if data_path else "test"

    def split_rule(self, split: str) -> SplitRule:
        if not self.data_path:
            return SplitRule("generator", "generator", self.seed, split)
        by = ALL if split == ALL else file_splits(load_jsonl(self.data_path), self.data_path, self.seed)[1]
        return SplitRule("file", by, self.seed, split)

    def score(self, sample: Sample, answer: str) -> Score:
        extracted = short_answer(answer)
        return Score(
            exact_match(extracted, sample.gold),
            extracted,
            {
                "f1": token_f1(extracted, sample.gold),
                "answer_in_reply": float(_contains_words(normalize_answer(answer), normalize_answer(sample.gold))),
            },
        )

    def design_splits(self, train_size: int, val_size: int, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
        """A file's train and validation splits, or the generator's (which share no entity), as many as asked."""
        if self.data_path:
            return super().design_splits(train_size, val_size, seed)
        source = type(self)(None, seed, count=max(train_size, val_size, 1), difficulty=self.difficulty)
        train, val = source.samples("train")[:train_size], source.samples("validation")[:val_size]
        check_design_sizes(self.name, train, val, train_size, val_size)
        return train, val

    @classmethod
    def agent_name(cls, index: int, role: str) -> str:
        return f"agent_{index + 1}"

    @classmethod
    def examples(cls, role: str) -> tuple[tuple[str, str], ...]:
        return EXAMPLES.get(role, ())

    @classmethod
    def terse_examples(cls, role: str) -> tuple[tuple[str, str], ...]:
        return TERSE_EXAMPLES.get(role, ())
