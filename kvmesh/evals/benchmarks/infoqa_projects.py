"""InfoQA in a second domain, research projects and the people who lead them: `kvmesh eval infoqa-projects`.

The built-in InfoQA generator writes about people (city, job, pet, sibling), and every prompt, example and
designer in kvmesh was tuned there. This one writes about projects (who leads each, where its team meets, who
pays for it) and their leads (office floor, lab), with other sentence shapes and question words, so a figure on
it shows how far choices made on the first domain carry over. The team, its examples and the scoring are
InfoQA's own (`InfoQA`): only the tasks differ.

Questions need one fact (30%: where a project's team meets, who pays for it) or two (the lead of a project,
then that lead's floor or lab); the two facts of a two-hop question go to different agents, and distractor facts
fill the notes. Splits are disjoint by construction, as in InfoQA: train, validation and test draw their project
names and leads from separate thirds of fixed pools, whatever the seed.

Caveat: `Difficulty` is the people generator's; this domain has one fixed shape (4 projects, 4 leads, 2 agents).
"""

from __future__ import annotations

import random

from kvmesh.evals.benchmarks.infoqa import InfoQA, InfoQATask
from kvmesh.evals.benchmarks.splits import SPLITS, check_split

PROJECTS = [
    "Helix",
    "Quarry",
    "Lantern",
    "Basalt",
    "Meridian",
    "Tundra",
    "Cobalt",
    "Saffron",
    "Juniper",
    "Orbit",
    "Falcon",
    "Marble",
    "Cipher",
    "Harbor",
    "Pioneer",
    "Willow",
    "Ember",
    "Atlas",
    "Nimbus",
    "Kestrel",
    "Aurora",
    "Beacon",
    "Cascade",
    "Delta",
    "Everest",
    "Fjord",
    "Granite",
    "Horizon",
    "Iris",
    "Jasper",
    "Krypton",
    "Lotus",
    "Mosaic",
    "Nova",
    "Onyx",
    "Prism",
]
SURNAMES = [
    "Okafor",
    "Lindqvist",
    "Haddad",
    "Moreau",
    "Tanaka",
    "Petrov",
    "Alvarez",
    "Nakamura",
    "Osei",
    "Brennan",
    "Kowalski",
    "Rahman",
    "Varga",
    "Santos",
    "Abebe",
    "Bergstrom",
    "Castillo",
    "Dubois",
    "Eriksen",
    "Fischer",
    "Gallo",
    "Horvat",
    "Ivanova",
    "Jensen",
    "Kaplan",
    "Laurent",
    "Mendes",
    "Novak",
    "Oyelaran",
    "Pereira",
    "Quinn",
    "Rossi",
    "Sato",
    "Tremblay",
    "Ueda",
    "Weber",
]
BUILDINGS = ["Building A", "Building C", "Building F", "Building K", "Building M", "Building R"]
FUNDERS = ["the Arden Trust", "the Bell Fund", "the Corvid Foundation", "the Delta Council", "the Elm Society"]
FLOORS = ["first", "second", "third", "fourth", "fifth"]
LABS = ["optics", "genomics", "robotics", "acoustics", "materials", "climate"]
PER_TASK = 4  # projects (and leads) in one task's world
ONE_HOP_SHARE = 0.3


def split_pool(pool: list[str], split: str) -> list[str]:
    """The third of a fixed shuffle of `pool` that belongs to `split` (the same for every seed)."""
    shuffled = list(pool)
    random.Random("infoqa-projects-splits").shuffle(shuffled)
    third = len(shuffled) // len(SPLITS)
    index = SPLITS.index(split)
    return shuffled[index * third : (index + 1) * third]


def one_task(rng: random.Random, task_id: str, projects_pool: list[str], leads_pool: list[str]) -> InfoQATask:
    projects = rng.sample(projects_pool, PER_TASK)
    leads = [f"Dr. {name}" for name in rng.sample(leads_pool, PER_TASK)]
    world = {
        p: {"lead": lead, "building": rng.choice(BUILDINGS), "funder": rng.choice(FUNDERS)}
        for p, lead in zip(projects, leads, strict=True)
    }
    people = {lead: {"floor": rng.choice(FLOORS), "lab": rng.choice(LABS)} for lead in leads}
    facts = []
    for p, about in world.items():
        facts += [
            (p, "lead", f"Project {p} is led by {about['lead']}."),
            (p, "building", f"The {p} team meets in {about['building']}."),
            (p, "funder", f"{about['funder'][0].upper()}{about['funder'][1:]} pays for project {p}."),
        ]
    for lead, about in people.items():
        facts += [
            (lead, "floor", f"{lead} has an office on the {about['floor']} floor."),
            (lead, "lab", f"{lead} runs the {about['lab']} lab."),
        ]
    subject = projects[0]
    if rng.random() < ONE_HOP_SHARE:
        relation = rng.choice(["building", "funder"])
        questions = {"building": f"Where does the {subject} team meet?", "funder": f"Who pays for project {subject}?"}
        needed, answer, hops = [(subject, relation)], world[subject][relation], 1
    else:
        relation, lead = rng.choice(["floor", "lab"]), world[subject]["lead"]
        questions = {
            "floor": f"On which floor is the office of the person who leads project {subject}?",
            "lab": f"Which lab is run by the person who leads project {subject}?",
        }
        needed, answer, hops = [(subject, "lead"), (lead, relation)], people[lead][relation], 2
    rng.shuffle(facts)
    holders = rng.sample(range(2), len(needed))  # needed facts with different agents, neither always the first
    shards = ["", ""]
    for position, (who, what, sentence) in enumerate(facts):
        needs = (who, what) in needed
        side = holders[needed.index((who, what))] if needs else position % 2
        shards[side] = (shards[side] + " " + sentence).strip()
    return InfoQATask(task_id, questions[relation], answer, shards, hops)


def generate_projects(count: int, split: str = "test", seed: int = 0) -> list[InfoQATask]:
    """`count` tasks of `split`; the same (count, split, seed) always gives the same tasks."""
    check_split(split, SPLITS, "the infoqa-projects generator")
    projects, leads = split_pool(PROJECTS, split), split_pool(SURNAMES, split)
    rng = random.Random(f"infoqa-projects-{split}-{seed}")
    return [one_task(rng, f"projects-{split}-{seed}-{i}", projects, leads) for i in range(count)]


class InfoQAProjects(InfoQA):
    """InfoQA's team and scoring on tasks about research projects and their leads."""

    name = "infoqa-projects"

    def generate(self, split: str) -> list[InfoQATask]:
        return generate_projects(self.count, split, self.seed)
