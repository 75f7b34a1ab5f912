"""Write an InfoQA JSONL in a domain no kvmesh prompt or designer was tuned on: research projects and labs.

    python benchmarks/infoqa_domain.py --out runs/domains/projects.jsonl --count 200 --seed 0
    kvmesh bench latent --data-path runs/domains/projects.jsonl --limit 200

The built-in generator writes about people (city, job, pet, sibling); this one writes about projects (lead,
building, funder) and their leads (office floor, lab), with other sentence shapes and question words, so
figures on it show how far prompts chosen on the built-in generator carry over. Questions need one fact (30%)
or two (the lead of a project, then a fact about that lead); distractor facts fill the notes. Same seed, same
file. The file is generated, never committed.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

PROJECTS = ["Helix", "Quarry", "Lantern", "Basalt", "Meridian", "Tundra", "Cobalt", "Saffron", "Juniper", "Orbit"]
PROJECTS += ["Falcon", "Marble", "Cipher", "Harbor", "Pioneer", "Willow", "Ember", "Atlas", "Nimbus", "Kestrel"]
LEADS = ["Dr. Okafor", "Dr. Lindqvist", "Dr. Haddad", "Dr. Moreau", "Dr. Tanaka", "Dr. Petrov", "Dr. Alvarez"]
LEADS += ["Dr. Nakamura", "Dr. Osei", "Dr. Brennan", "Dr. Kowalski", "Dr. Rahman", "Dr. Varga", "Dr. Santos"]
BUILDINGS = ["Building A", "Building C", "Building F", "Building K", "Building M", "Building R"]
FUNDERS = ["the Arden Trust", "the Bell Fund", "the Corvid Foundation", "the Delta Council", "the Elm Society"]
FLOORS = ["first", "second", "third", "fourth", "fifth"]
LABS = ["optics", "genomics", "robotics", "acoustics", "materials", "climate"]


def one_task(rng: random.Random, index: int) -> dict:
    projects = rng.sample(PROJECTS, 4)
    leads = rng.sample(LEADS, 4)
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
    if rng.random() < 0.3:
        relation = rng.choice(["building", "funder"])
        questions = {"building": f"Where does the {subject} team meet?", "funder": f"Who pays for project {subject}?"}
        needed, answer = [(subject, relation)], world[subject][relation]
        hops = 1
    else:
        relation, lead = rng.choice(["floor", "lab"]), world[subject]["lead"]
        questions = {
            "floor": f"On which floor is the office of the person who leads project {subject}?",
            "lab": f"Which lab is run by the person who leads project {subject}?",
        }
        needed, answer = [(subject, "lead"), (lead, relation)], people[lead][relation]
        hops = 2
    rng.shuffle(facts)
    shards = ["", ""]
    for position, (who, what, sentence) in enumerate(facts):
        need = (who, what) in needed
        side = needed.index((who, what)) % 2 if need else position % 2  # the two needed facts on different sides
        shards[side] = (shards[side] + " " + sentence).strip()
    return {
        "id": f"projects-{index}",
        "question": questions[relation],
        "answer": answer,
        "shards": shards,
        "hops": hops,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the JSONL file to write")
    parser.add_argument("--count", type=int, default=200, help="tasks to write")
    parser.add_argument("--seed", type=int, default=0, help="seeds the tasks")
    args = parser.parse_args()
    rng = random.Random(f"projects-{args.seed}")
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as file:
        for index in range(args.count):
            file.write(json.dumps(one_task(rng, index)) + "\n")
    print(f"wrote {args.count} tasks to {path}")


if __name__ == "__main__":
    main()
