"""`kvmesh bench kv-reuse`: time to first token of each agent, dense prefill against cache reuse, in one process.

The setting is KVCOMM's headline one (sizes are flags): a fully connected team of 5 agents; agent k reads its
own prefix (512 tokens), the task (1024 tokens) and the replies of agents 1 .. k-1 (512 tokens each), so the
5th agent's prompt is 3,584 tokens. Text is synthetic but natural (seeded sentences about invented people,
built from the InfoQA vocabulary) and counted with the model's tokenizer.

For each task:
  dense:  agent k prefills its whole prompt (timed to its first token), then decodes its reply greedily.
  reuse:  agent k's cache is assembled by the reuse engine (its prefix template, the task from agent 1's
          cache, every reply from its sender's cache, glue templates), corrected by anchors, and only the
          tail is prefilled (timed to the first token, every step of cache preparation included). A call the
          anchor test refuses prefills densely (timed as such) and teaches the engine an anchor.
          Senders' replies are the dense replies (so both paths read the same text); their caches come from
          the reuse path itself, by feeding those tokens after the sender's assembled prompt cache.
Agreement: share of agent calls whose first `agreement_tokens` greedy tokens equal the dense ones.
Template segments (agent prefixes, glue) are encoded once ahead, as in KVCOMM; that cost is reported apart.
Every call is a row of the model's running batch (`kvmesh.llm.engine`), one at a time: KVCOMM's setting is
one request at a time, and end-of-sequence tokens are never chosen (`min_new_tokens`), so every reply has
exactly the requested length.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass

from kvmesh.evals.benchmarks.infoqa import JOBS, PETS, invented_name
from kvmesh.kvcomm.assembly import Assembly, Piece, run_preparation
from kvmesh.kvcomm.kv_reuse.engine import ReuseConfig, ReuseEngine
from kvmesh.llm.base import Generation, GenerationRequest
from kvmesh.llm.local import LocalLM, load_model
from kvmesh.llm.segment import KVSegment


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
    agreement_tokens: int = 32
    gamma: float = 0.3
    temperature: float = 0.1
    correct: bool = True
    min_anchors: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.agents < 2 or self.tasks <= self.warmup or self.warmup < 0:
            raise ValueError("need at least 2 agents and more tasks than warm-up tasks")
        if min(self.input_tokens, self.prefix_tokens, self.output_tokens, self.agreement_tokens) < 1:
            raise ValueError("token sizes must be positive")


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


def _row(lm: LocalLM, prompt: list[int], tokens: int, prefix: Assembly | None = None) -> Generation:
    """One row on its own: `tokens` greedy tokens (0: prefill only) after `prompt`, keeping the prompt's cache."""
    request = GenerationRequest(prompt, tokens, prefix=prefix, keep_kv=True, min_new_tokens=tokens)
    return lm.generate_requests([request])[0]


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

    dense_ttft = [[] for _ in names]
    reuse_ttft = [[] for _ in names]
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

            # dense: the whole prompt (timed to the first token), then the reply
            dense = _row(llm, prompt, config.output_tokens)
            if measured:
                dense_ttft[k].append(dense.ttft_s)
            reply = dense.token_ids

            # reuse: assemble, then prefill the rest (timed to the first token, cache preparation included)
            pieces = [Piece(tuple(heads[k])), *middle, Piece(tuple(tail))]
            started = time.perf_counter()
            if k:
                assembly = run_preparation(engine.assemble(name, pieces, spare=config.agreement_tokens), llm)
            else:  # agent 1 has only its prefix template to reuse
                head = engine.template(heads[0])
                assembly = Assembly.of(head, task + instruction + tail, spare=config.agreement_tokens)
            prepared = time.perf_counter() - started
            reused = _row(llm, prompt, config.agreement_tokens, assembly)  # dense when the anchor test refused
            seconds = prepared + reused.ttft_s
            if measured:
                reuse_ttft[k].append(seconds)
                if k:
                    reusable_calls += 1
                    reused_calls += assembly is not None
            first = reused.token_ids
            if measured:
                compared += 1
                agree += first == reply[: config.agreement_tokens]
                agree_reused += assembly is not None and k > 0 and first == reply[: config.agreement_tokens]
            if k and assembly is None:
                engine.learn(name, pieces, dense.prompt_kv)  # the dense prompt's cache teaches anchors
            prompt_cache = reused.prompt_kv
            if k == 0:
                task_source = prompt_cache.slice(len(heads[0]), len(heads[0]) + len(task))
            # the sender's reply cache on the reuse path: the dense reply's tokens fed after its prompt cache
            fed = _row(llm, prompt + reply, 0, Assembly.of(prompt_cache, reply)).prompt_kv
            replies.append(reply)
            reply_caches.append(fed.slice(len(prompt)))
            fallback = "" if assembly is not None or k == 0 else " (dense fallback)"
            progress(
                f"task {t + 1}/{config.tasks} {name}: {len(prompt)} prompt tokens, reuse {seconds:.3f} s{fallback}"
            )
            last_prompt = len(prompt)

    dense_mean = [statistics.fmean(v) for v in dense_ttft]
    reuse_mean = [statistics.fmean(v) for v in reuse_ttft]
    return {
        "config": asdict(config),
        "prompt_tokens_last_agent": last_prompt,
        "ttft_dense_s": dense_mean,
        "ttft_reuse_s": reuse_mean,
        "speedup_per_agent": [d / r for d, r in zip(dense_mean, reuse_mean, strict=True)],
        "speedup_last_agent": dense_mean[-1] / reuse_mean[-1],
        "reuse_rate": reused_calls / reusable_calls,
        "agreement": agree / compared,
        "agreement_reused_calls": agree_reused / max(1, reused_calls),  # agents 2.. that did reuse
        "anchor_memory_mb": engine.anchors.nbytes / 2**20,
        "anchors": len(engine.anchors),
        "template_encode_s": engine.stats.template_s,
        "template_tokens": engine.stats.template_tokens,
    }
