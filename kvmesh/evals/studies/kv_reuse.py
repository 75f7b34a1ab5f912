"""`kvmesh bench kv-reuse`: time to first token of each agent, dense prefill against cache reuse, in one process.

The setting is KVCOMM's headline one (sizes are flags): a fully connected team of 5 agents; agent k reads its
own prefix (512 tokens), the task (1024 tokens) and the replies of agents 1 .. k-1 (512 tokens each), so the
5th agent's prompt is 3,584 tokens. Text is synthetic but natural (seeded sentences about invented people,
built from the InfoQA vocabulary) and counted with the model's tokenizer.

For each task and agent k:
  dense:  agent k prefills its whole prompt and chooses its first token (timed), and decodes its reply greedily
          (once, untimed).
  reuse:  agent k's cache is assembled by the reuse engine (its prefix template, the task from agent 1's
          cache, every reply from its sender's cache, glue templates), corrected by anchors, and only the
          tail is prefilled up to the first token (timed, every step of cache preparation included). A call the
          anchor test refuses prefills densely (timed as such) and teaches the engine an anchor.
          Senders' replies are the dense replies (so both paths read the same text); their caches come from
          the reuse path itself, by feeding those tokens after the sender's assembled prompt cache.
Timing (`kvmesh.evals.timing`): after the warm-up tasks, each agent call times both paths in `repeats` rounds
after `warmup_calls` untimed calls of each, alternating which goes first (the rotation runs on across tasks);
a time to first token is the wall time of a one-token call (preparation included), and the speedup is dense over
reuse within each round. Per agent, the report gives the median with the min and max over every round of every
measured task, for both times and for the speedup. Timed calls teach no anchor (only the untimed dense call
does), so every round of a call times the same work.
Agreement: share of agent calls whose first `agreement_tokens` greedy tokens equal the dense ones.
Template segments (agent prefixes, glue) are encoded once ahead, as in KVCOMM; that cost is reported apart.
Every call is a row of the model's running batch (`kvmesh.llm.engine`), one at a time: KVCOMM's setting is
one request at a time, and end-of-sequence tokens are never chosen (`min_new_tokens`), so every reply has
exactly the requested length.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from functools import partial

from kvmesh.agents.usage import format_rows
from kvmesh.config import ConfigError
from kvmesh.evals.benchmarks.infoqa import JOBS, PETS, invented_name
from kvmesh.evals.timing import Spread, Timings, combine, format_spread, time_modes
from kvmesh.kvcomm.assembly import Assembly, Piece, run_preparation
from kvmesh.kvcomm.kv_reuse.engine import ReuseConfig, ReuseEngine
from kvmesh.llm.base import Generation, GenerationRequest
from kvmesh.llm.local import LocalLM, load_model
from kvmesh.llm.segment import KVSegment

DENSE, REUSE = "dense", "reuse"


@dataclass
class KVReuseStudyConfig:
    """Sizes and settings of the kv-reuse benchmark.

    Args:
        model: alias, local folder or Hugging Face id.
        agents: agents in the fully connected team.
        input_tokens: tokens of the task text every agent reads.
        prefix_tokens: tokens of each agent's own prefix (its system prompt).
        output_tokens: tokens each agent generates (its reply, read by the agents after it).
        tasks: tasks run; the first `warmup` only teach anchors and are left out of the timings.
        warmup: tasks that only teach anchors (the engine reuses a placeholder after min_anchors dense calls).
        repeats: timed rounds per agent call of a measured task, each timing dense and reuse once.
        warmup_calls: untimed calls of each path before an agent call's timed rounds.
        min_anchors: dense calls per (receiver, placeholder) before the engine reuses it.
        agreement_tokens: greedy tokens compared between reuse and dense for agreement.
        gamma: the reuse engine's threshold: reuse when an anchor lies within this descriptor distance.
        temperature: softmax temperature over anchor distances (tiny: the nearest anchor alone).
        correct: add the anchors' offsets (--no-correct moves caches uncorrected, for the ablation).
        seed: seeds the synthetic text.
    """

    model: str = "smollm2-135m"
    agents: int = 5
    input_tokens: int = 1024
    prefix_tokens: int = 512
    output_tokens: int = 512
    tasks: int = 6
    warmup: int = 3
    repeats: int = 3
    warmup_calls: int = 1
    agreement_tokens: int = 32
    gamma: float = 0.3
    temperature: float = 0.1
    correct: bool = True
    min_anchors: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if self.agents < 2 or self.tasks <= self.warmup or self.warmup < 0:
            raise ConfigError("need at least 2 {agents} and more {tasks} than {warmup} tasks", owner)
        if min(self.input_tokens, self.prefix_tokens, self.output_tokens, self.agreement_tokens) < 1:
            raise ConfigError("token sizes must be positive", owner)
        if self.repeats < 1:
            raise ConfigError(f"{{repeats}} must be at least 1 (timed rounds per call), got {self.repeats}", owner)
        if self.warmup_calls < 0:
            raise ConfigError(f"{{warmup_calls}} must be 0 or more, got {self.warmup_calls}", owner)


_FACTS = [
    "{a} lives in {c} and walks to the market every morning.",
    "{a} works as a {j} and keeps careful notes about each day.",
    "{a} has a {p} that sleeps by the window in the afternoon.",
    "{a} met {b} at the station in {c} last spring.",
    "{a} and {b} share a small garden at the edge of {c}.",
    "Every weekend {a} visits {b}, who works as a {j}.",
]


def synthetic_text(rng: random.Random, tokenizer, tokens: int, lead: str = "") -> list[int]:
    """Natural-looking sentences until `tokens` ids, cut to exactly that many."""
    ids: list[int] = tokenizer(lead, add_special_tokens=False)["input_ids"] if lead else []
    while len(ids) < tokens:
        template = rng.choice(_FACTS)  # drawn first: the seeded text must not change with this code's layout
        a, b, c = invented_name(rng), invented_name(rng), invented_name(rng) + "vik"
        fact = template.format(a=a, b=b, c=c, j=rng.choice(JOBS), p=rng.choice(PETS))
        ids += tokenizer(" " + fact, add_special_tokens=False)["input_ids"]
    return ids[:tokens]


def _row(lm: LocalLM, prompt: list[int], tokens: int, prefix: Assembly | None = None, keep: bool = True) -> Generation:
    """One row on its own: `tokens` greedy tokens (0: prefill only) after `prompt`, keeping the prompt's cache
    unless `keep` is off."""
    request = GenerationRequest(prompt, tokens, prefix=prefix, keep_kv=keep, min_new_tokens=tokens)
    return lm.generate_requests([request])[0]


def _reuse_cache(
    engine: ReuseEngine, k: int, name: str, pieces: list[Piece], rest: list[int], spare: int
) -> Assembly | None:
    """Agent k's cache on the reuse path, up to its tail; None when the anchor test refuses it. Agent 1 has only
    its prefix template to reuse (`rest`: the tokens after it)."""
    if k:
        return run_preparation(engine.assemble(name, pieces, spare=spare), engine.model)
    return Assembly.of(engine.template(pieces[0].token_ids), rest, spare=spare)


def run_study(config: KVReuseStudyConfig, progress=print) -> dict:
    llm = load_model(config.model)
    tokenizer = llm.tokenizer
    rng = random.Random(config.seed)

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def head_and_tail(system: str) -> tuple[list[int], list[int]]:
        """The chat template around a user turn whose text goes between head and tail."""
        before, after = llm.chat.frame(system)
        return encode(before), encode(after)

    names = [f"agent_{k + 1}" for k in range(config.agents)]
    heads, tail = [], []
    for name in names:
        text = tokenizer.decode(synthetic_text(rng, tokenizer, config.prefix_tokens))
        head, tail = head_and_tail(f"You are {name}." + text)
        heads.append(head)
    glue = [encode(f"\n\nMessage from {n}:\n") for n in names]
    instruction = encode("\n\nAnswer the question in the notes.")
    settings = ReuseConfig(
        gamma=config.gamma, min_anchors=config.min_anchors, temperature=config.temperature, correct=config.correct
    )
    engine = ReuseEngine(llm, settings, sink=heads[0][:1])
    templates = [(False, *ids) for ids in heads] + [(True, *ids) for ids in [*glue, instruction]]
    run_preparation(engine.templates(templates), llm)  # encoded once ahead (reported as template_encode_s)

    timings: list[list[Timings]] = [[] for _ in names]
    agree = compared = reused_calls = reusable_calls = agree_reused = 0
    for t in range(config.tasks):
        measured = t >= config.warmup
        task = synthetic_text(rng, tokenizer, config.input_tokens, lead="Notes:")
        replies: list[list[int]] = []
        reply_caches: list[KVSegment] = []
        task_source: KVSegment | None = None
        for k, name in enumerate(names):
            middle = [Piece(tuple(task), task_source, "task")] if k else []
            for j in range(k):
                middle += [Piece(tuple(glue[j])), Piece(tuple(replies[j]), reply_caches[j], ("reply", j))]
            middle.append(Piece(tuple(instruction)))
            prompt = heads[k] + task + [i for j in range(k) for i in glue[j] + replies[j]] + instruction + tail
            pieces = [Piece(tuple(heads[k])), *middle, Piece(tuple(tail))]
            rest = task + instruction + tail
            prepare = partial(_reuse_cache, engine, k, name, pieces, rest, config.agreement_tokens)

            # dense: the reply (untimed; its prompt cache teaches anchors)
            dense = _row(llm, prompt, config.output_tokens)
            reply = dense.token_ids
            line = f"task {t + 1}/{config.tasks} {name}: {len(prompt)} prompt tokens"
            if measured:  # time to first token, both paths, in alternating rounds
                timed = time_modes(
                    {
                        DENSE: lambda prompt=prompt: _row(llm, prompt, 1, keep=False),
                        REUSE: lambda prompt=prompt, prepare=prepare: _row(llm, prompt, 1, prepare(), keep=False),
                    },
                    repeats=config.repeats,
                    warmup=config.warmup_calls,
                    first_round=(t - config.warmup) * config.repeats,
                )
                timings[k].append(timed)
                dense_s, reuse_s = (format_spread(timed.spread(path), unit=" s") for path in (DENSE, REUSE))
                line += f", TTFT dense {dense_s}, reuse {reuse_s}"
            else:
                line += ", warm-up (not timed)"

            # reuse: assemble, then the first tokens to compare with the dense reply (untimed)
            assembly = prepare()
            reused = _row(llm, prompt, config.agreement_tokens, assembly)  # dense when the anchor test refused
            first = reused.token_ids
            if measured:
                compared += 1
                agree += first == reply[: config.agreement_tokens]
                if k:
                    reusable_calls += 1
                    reused_calls += assembly is not None
                    agree_reused += assembly is not None and first == reply[: config.agreement_tokens]
            if k and assembly is None:
                engine.learn(name, pieces, dense.prompt_kv)  # the dense prompt's cache teaches anchors
            prompt_cache = reused.prompt_kv
            if k == 0:
                task_source = prompt_cache.slice(len(heads[0]), len(heads[0]) + len(task))
            # the sender's reply cache on the reuse path: the dense reply's tokens fed after its prompt cache
            fed = _row(llm, prompt + reply, 0, Assembly.of(prompt_cache, reply)).prompt_kv
            replies.append(reply)
            reply_caches.append(fed.slice(len(prompt)))
            progress(line + ("" if assembly is not None or k == 0 else " (dense fallback)"))
            last_prompt = len(prompt)

    per_agent = [_agent_timings(combine(agent)) for agent in timings]
    return {
        "config": asdict(config),
        "prompt_tokens_last_agent": last_prompt,
        "ttft": per_agent,
        "ttft_dense_s": [a["dense"]["median"] for a in per_agent],
        "ttft_reuse_s": [a["reuse"]["median"] for a in per_agent],
        "speedup_per_agent": [a["speedup"]["median"] for a in per_agent],
        "speedup_last_agent": per_agent[-1]["speedup"]["median"],
        "reuse_rate": reused_calls / reusable_calls,
        "agreement": agree / compared,
        "agreement_reused_calls": agree_reused / max(1, reused_calls),  # agents 2.. that did reuse
        "anchor_memory_mb": engine.anchors.nbytes / 2**20,
        "anchors": len(engine.anchors),
        "template_encode_s": engine.stats.template_s,
        "template_tokens": engine.stats.template_tokens,
    }


def _agent_timings(timings: Timings) -> dict:
    """One agent's times to first token over every timed round: median/min/max of each path and of the speedup
    (dense over reuse, within each round), and the rounds' values."""
    speedups = timings.ratios(DENSE, REUSE)
    return {
        "dense": timings.spread(DENSE).as_dict(),
        "reuse": timings.spread(REUSE).as_dict(),
        "speedup": Spread.of(speedups).as_dict(),
        "rounds": len(timings.rounds),
        "dense_s": timings.seconds(DENSE),
        "reuse_s": timings.seconds(REUSE),
        "speedups": speedups,
    }


def format_table(result: dict) -> list[str]:
    """The result as table lines: one row per agent, median (min-max) over its timed rounds, then the totals."""
    rows = [("", "TTFT dense (s)", "TTFT reuse (s)", "speedup")]
    for k, agent in enumerate(result["ttft"]):
        rows.append(
            (
                f"agent {k + 1}",
                format_spread(agent["dense"]),
                format_spread(agent["reuse"]),
                format_spread(agent["speedup"], digits=1),
            )
        )
    lines = format_rows(rows)
    lines.append(f"median (min-max) over {result['ttft'][0]['rounds']} timed rounds per agent; speedup per round")
    for key in ("speedup_last_agent", "reuse_rate", "agreement", "anchor_memory_mb", "template_encode_s"):
        lines.append(f"{key:20s} {result[key]:.3f}")
    return lines
