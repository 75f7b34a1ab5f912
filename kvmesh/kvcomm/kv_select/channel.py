"""The `kv-select` channel (KVComm): a receiver reads its sender's context straight from the sender's KV cache,
in a chosen subset of layers.

    sender's turn     prefills its prompt (its notes, the task, what it received) and keeps that prompt's cache
    receiver's turn   its cache starts with the sender's cache (positions 0 .. C - 1), then its own prompt is
                      prefilled after it; only the chosen layers read positions 1 .. C - 1, every other layer
                      sees the first (sink) token alone (`LatentSpan`, enforced per layer by the engine)

Positions: the receiver's own tokens sit at C, C + 1, ... in every layer. In the layers that see only the
sink, its key is moved to position C - 1 so that the distance from each receiver token to it is what it would
be in a cache holding the sink alone (KVComm gives those layers their own positions; this is the same thing).
With every layer chosen, the receiver reads exactly what a dense prefill of [sender's prompt, own prompt]
would give (tests check greedy equality). Layers come from `KVSelectConfig.layers`, or are chosen by
`kvmesh.kvcomm.kv_select.layers.choose_layers` from calibration scores (`calibrate`) or the depth prior alone.

Latent thoughts (`thoughts` N > 0, LatentMAS): the sender runs N latent steps after its prompt (its last hidden
state fed back as its next input, `kvmesh.llm.thoughts`), batched with every other row, and keeps them in its
prompt's cache: receivers read the prompt's positions and the N thought positions after them, and count them
in `cache_read`; the sender's usage counts its `latent_steps`. Calibration reads prompts without thoughts.

Token selection (`token_fraction` < 1): the receiver reads only the context tokens its own tokens attend to
most in the first layer (`kvmesh.kvcomm.kv_select.tokens`); the rest stay in its cache, masked in every layer, so
positions do not move.

Variants (`kvmesh.kvcomm.channel`): `kv-select@P` reads P% of the layers, `kv-select@P:tokens@T` also only T% of
the context tokens, `kv-select@P+tN` after N latent thoughts (the names `kvmesh bench latent` gives its modes),
each derived from the team's kv-select settings. A sender read over variants with different thoughts runs the
most of them once; each variant keeps its prompt cache with its own number of thought positions. Caveat: one row
per turn, so a sender also read over text decodes its reply after those thoughts: a thinking edge out of an agent
changes the text its other edges carry (and its time).

Usage stays exact: the receiver's input tokens include the C positions it read and `cache_read` counts them;
the sender's prefill is its own input.

A receiver that is itself read over kv-select passes on its own prompt's cache, without the contexts it read
(moved to start at position 0): a reader of both it and its senders reads each context once.

Calibration: with `record=True` the channel keeps each (context ids, receiver ids) pair it placed; run a team
with every layer chosen on training tasks and hand the pairs to `layers.context_attention` (the evals layer's
`calibrate_kv_select` does it), whose scores go in `KVSelectConfig.scores` and are saved with the team's spec.

Caveats: both ends must share one model (the same KV geometry and tokenizer); a message with no context
cache (its sender ran dense without keeping one) is read as text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch

from kvmesh.kvcomm.assembly import Assembly, Piece, Preparation
from kvmesh.kvcomm.channel import Cached, Channel, ChannelNotAvailableError, Endpoint, Keep, TurnView, reply_key
from kvmesh.kvcomm.kv_select.layers import LayerChoice, choose_layers, context_attention
from kvmesh.kvcomm.kv_select.tokens import context_token_scores, tokens_to_drop
from kvmesh.kvcomm.latent import LATENT, join_contexts, latent_layout, ready
from kvmesh.kvcomm.rope import Rope
from kvmesh.llm.base import Generation, KVModel, LanguageModel, LatentSpan
from kvmesh.llm.segment import KVSegment

NAME = "kv-select"
log = logging.getLogger("kvmesh")
# a variant's label: P% of the layers, optionally T% of the context tokens and N latent thoughts
LABEL = re.compile(r"(?P<layers>\d+)(?::tokens@(?P<tokens>\d+))?(?:\+t(?P<thoughts>\d+))?")


@dataclass
class KVSelectConfig:
    """Settings of kv-select edges.

    Args:
        layers: the layers that read a sender's context; None: chosen per model from the fields below, on
            calibration scores when `scores` holds some, else on the depth prior alone.
        fraction: share of the layers to choose (KVComm: 0.3).
        weight: weight of calibration attention against the depth prior.
        centre: the depth prior's centre, as relative depth (0.5: mid-depth).
        width: the depth prior's standard deviation, in relative depth.
        keep_first: also read the context in layer 0.
        scores: calibration scores per layer (`kvmesh.kvcomm.kv_select.layers.context_attention`), saved with the team.
        token_fraction: token selection: the share of context tokens a receiver reads at all (the most attended
            by its own tokens, `kvmesh.kvcomm.kv_select.tokens`); 1 reads every token.
        thoughts: latent thoughts a sender runs after its prompt, read by its receivers after the prompt's
            positions (LatentMAS); 0: none.
    """

    layers: tuple[int, ...] | None = None
    fraction: float = field(default=0.3, metadata={"alias": "layer_fraction"})  # --layer-fraction F
    weight: float = 0.5
    centre: float = 0.5
    width: float = 0.2
    keep_first: bool = True
    scores: tuple[float, ...] | None = None
    token_fraction: float = 1.0
    thoughts: int = 0

    def __post_init__(self) -> None:
        if self.layers is not None:  # specs load lists
            self.layers = tuple(int(layer) for layer in self.layers)
        if self.scores is not None:
            self.scores = tuple(float(score) for score in self.scores)
        self.choice()  # refuses bad fractions, weights, centres and widths now
        if not 0 < self.token_fraction <= 1:
            raise ValueError(f"kv-select token_fraction must be in (0, 1], got {self.token_fraction}")
        if not isinstance(self.thoughts, int) or self.thoughts < 0:
            raise ValueError(f"kv-select thoughts must be an integer >= 0 (latent steps), got {self.thoughts!r}")

    def choice(self) -> LayerChoice:
        return LayerChoice(self.fraction, self.weight, self.centre, self.width, self.keep_first)

    def chosen(self, layers: int) -> frozenset[int]:
        """The layers that read a sender's context, for a model of `layers` layers."""
        if self.layers is not None:
            bad = [layer for layer in self.layers if not 0 <= layer < layers]
            if bad:
                raise ValueError(f"kv-select layers {bad} do not exist in a model of {layers} layers")
            return frozenset(self.layers)
        if self.scores is None:  # no calibration: the depth prior alone
            return choose_layers(torch.zeros(layers), replace(self.choice(), weight=0.0))
        if len(self.scores) != layers:
            raise ValueError(f"kv-select has calibration scores for {len(self.scores)} layers, the model has {layers}")
        return choose_layers(torch.tensor(self.scores, dtype=torch.float64), self.choice())


def _kv_mismatch(first: KVModel, second: KVModel) -> str | None:
    """What two loaded models do not share of what kv-select needs (KV geometry, tokenizer), or None."""
    a, b = first.model.config, second.model.config
    geometry = [(c.num_hidden_layers, c.num_key_value_heads, getattr(c, "head_dim", None)) for c in (a, b)]
    if geometry[0] != geometry[1]:
        return f"KV geometry (layers, KV heads, head dimension: {geometry[0]} and {geometry[1]})"
    if first.tokenizer.get_vocab() != second.tokenizer.get_vocab():
        return "tokenizers"
    return None


class KVSelectChannel(Channel):
    """Reads a sender's context cache in the chosen layers; see the module docstring."""

    name = NAME
    summary = (
        "senders only prefill (their transcripts stay empty); receivers read their prompt caches in chosen layers; "
        "variants kv-select@P (P% of the layers), kv-select@P:tokens@T, kv-select@P+tN (after N latent thoughts)"
    )
    settings_class = KVSelectConfig
    reads_reply = False  # a receiver reads the sender's prompt cache: a sender nobody else reads generates nothing
    carries_caches = True
    calibrates = True  # layers chosen on where receivers attend (`calibrate`)

    def __init__(self, settings: KVSelectConfig | None = None, record: bool = False) -> None:
        super().__init__(settings)
        self.record = record
        self.pairs: list[tuple[tuple[int, ...], tuple[int, ...]]] = []  # (context ids, receiver ids), if recording
        self._layers: dict[int, frozenset[int]] = {}
        self._ropes: dict[int, Rope] = {}
        self._models: dict[int, KVModel] = {}
        self._moved: dict[int, int] = {}  # id(context segment) -> bytes its last placement read
        self.calls = self.latent_tokens = self.moved_bytes = self.dropped_tokens = 0

    @classmethod
    def variant(cls, label: str, settings: KVSelectConfig) -> KVSelectConfig:
        """`P[:tokens@T][+tN]`: P% of the layers (chosen as `fraction` chooses them), T% of the context tokens
        (default 100) and N latent thoughts (default 0), so a name means the same in every team; the rest of
        `settings` (how layers are chosen: weight, centre, width, calibration scores) as they are."""
        found = LABEL.fullmatch(label)
        if found is None:
            raise ValueError(
                f"{label!r} is not a kv-select variant; name one kv-select@P (P% of the layers), "
                "kv-select@P:tokens@T (and T% of the context tokens) or kv-select@P+tN (after N latent thoughts), "
                "e.g. kv-select@30, kv-select@100:tokens@50, kv-select@100+t5"
            )
        if settings.layers is not None:
            raise ValueError(
                f"kv-select's settings fix its layers ({list(settings.layers)}), so a variant's share of the "
                "layers would not apply: drop the fixed layers or name the channel kv-select alone"
            )
        layers, tokens, thoughts = (found.group(key) for key in ("layers", "tokens", "thoughts"))
        for share, what in ((layers, "layers"), (tokens, "context tokens")):
            if share is not None and not 1 <= int(share) <= 100:
                raise ValueError(f"a kv-select variant reads 1 to 100% of the {what}, got {share}")
        return replace(
            settings,
            fraction=int(layers) / 100,
            token_fraction=int(tokens) / 100 if tokens is not None else 1.0,
            thoughts=int(thoughts) if thoughts is not None else 0,
        )

    def check(self, sender: Endpoint, receiver: Endpoint, where: str) -> None:
        """Both ends on one model, or on two loaded models with one KV geometry and one tokenizer (a fine-tuned
        copy of the other); two different specs are refused without loading them."""
        if sender.model is receiver.model or sender.model_spec == receiver.model_spec:
            return
        names = f"{sender.model_spec} and {receiver.model_spec}"
        if isinstance(sender.model, KVModel) and isinstance(receiver.model, KVModel):
            differs = _kv_mismatch(sender.model, receiver.model)
            if differs is None:
                return
            problem = f"agents on models with different {differs} ({names})"
        else:
            problem = f"agents on different models ({names})"
        raise ChannelNotAvailableError(
            f"kv-select {where} joins {problem}; it reads one model's cache in another's layers, so both need one "
            "KV geometry and tokenizer: put both on one model (or pass two loaded models that share them), or use "
            "channel='c2c' (which maps caches between models) or 'text'."
        )

    def prepare(self, model: LanguageModel) -> None:
        if not isinstance(model, KVModel):
            raise ChannelNotAvailableError(f"{model.spec}: kv-select needs a model in this process (a LocalLM)")
        if id(model) not in self._layers:
            self._layers[id(model)] = self.config.chosen(model.model.config.num_hidden_layers)
            self._ropes[id(model)] = Rope.from_model(model.model)
            self._models[id(model)] = model

    def layers(self, model: LanguageModel) -> frozenset[int]:
        self.prepare(model)
        return self._layers[id(model)]

    def layout(
        self, model: LanguageModel, glue: str, content: str, cached: KVSegment | None, key: Hashable
    ) -> list[Piece]:
        """The sender's context cache, read in front of the receiver's prompt; as text when none was kept."""
        return latent_layout(self.name, glue, content, cached, key)

    def place(self, model: LanguageModel, receiver: Hashable, pieces: Sequence[Piece]) -> Preparation | None:
        """The receiver's cache: the sender's context (several senders' one after another, moved to their
        places), visible to the chosen layers only; the receiver's own prompt is prefilled after it."""
        rope, chosen = self._ropes[id(model)], self.layers(model)
        joined = join_contexts(pieces, self.name, rope)
        if joined is None:
            return None
        latent, context, rest, start = joined.latent, joined.context, joined.rest, len(joined.context)
        assembly = Assembly.of(context, rest)
        layers = assembly.keys.shape[0]
        skipping = [layer for layer in range(layers) if layer not in chosen]
        dropped = frozenset()
        if self.config.token_fraction < 1 and start > 1:
            scores = context_token_scores(model.model, context, rest)
            dropped = tokens_to_drop(scores, self.config.token_fraction)
        if skipping:  # the sink's distance to the receiver's tokens as in a sink-only cache
            sink = assembly.keys[skipping, :, :1]
            assembly.keys[skipping, :, :1] = rope.rotate(sink, start - 1)
        if skipping or dropped:
            assembly.latent = LatentSpan(1, start, chosen, dropped)
        first = 0
        for index, piece in enumerate(latent):  # chosen layers read the kept positions; the others the sink alone
            per_position = piece.source.nbytes // (layers * len(piece.source))
            kept = len(piece.source) - sum(1 for p in dropped if first <= p < first + len(piece.source))
            seen = len(chosen) * kept + (len(skipping) if index == 0 else 0)
            self._moved[id(piece.source)] = seen * per_position
            first += len(piece.source)
        self.dropped_tokens += len(dropped)
        self.calls += 1
        self.latent_tokens += start
        self.moved_bytes += sum(self._moved[id(piece.source)] for piece in latent)
        if self.record:
            self.pairs.append((context.token_ids, tuple(rest)))
        return ready(assembly)

    def kv_bytes(self, model: LanguageModel, pieces: Sequence[Piece]) -> int:
        """Bytes of one message's context the receiver's layers read (as its last `place` laid them)."""
        return sum(self._moved.get(id(p.source), 0) for p in pieces if p.kind == LATENT and p.channel == self.name)

    def keeps(self, turn: TurnView) -> Keep:
        """A turn read over kv-select keeps its prompt's cache, after its thoughts: the context its receivers
        read."""
        read = self.name in turn.read_over
        return Keep(prompt=read, thoughts=self.config.thoughts if read else 0)

    def learn(self, turn: TurnView, generation: Generation) -> None:
        """Keep the turn's prompt cache for its receivers: its own part, without the contexts it read."""
        if self.name not in turn.read_over or generation.prompt_kv is None:
            return
        # the contexts it read lead its prompt, over whichever channel (a turn reads caches over one at a time)
        read = sum(len(p.token_ids) for p in turn.pieces if p.kind == LATENT)
        own = generation.prompt_kv
        extra = generation.latent_steps - self.config.thoughts  # thoughts the row ran for another variant
        if extra > 0:
            own = own.slice(0, len(own) - extra)
        if read:
            own = self._ropes[id(turn.model)].move(own.slice(read), 0)
        turn.store[reply_key(*turn.receiver, self.name)] = Cached(self.name, own)

    def layers_by_spec(self) -> dict[str, list[int]]:
        """The chosen layers of each model this channel has prepared, by model spec."""
        return {self._models[key].spec: sorted(layers) for key, layers in self._layers.items()}

    def wants_calibration(self) -> bool:
        """Layers chosen neither by hand nor by calibration scores, and not all of them: calibrate before use."""
        return self.config.layers is None and self.config.scores is None and self.config.fraction < 1

    def begin_calibration(self) -> None:
        self.record = True

    def calibrate(self, probe: Callable[[object], Channel]) -> KVSelectConfig:
        """These settings with calibration scores: the probe team reads every context in every layer (the dense
        read, exactly; senders run no thoughts, whose positions have no tokens to score) and records each
        (context ids, receiver ids) pair it placed; `context_attention` averages the attention mass the
        receivers' tokens put on the contexts per layer over those pairs."""
        recorder = probe(replace(self.config, layers=None, fraction=1.0, scores=None, thoughts=0))
        models = {model.spec: model for model in recorder._models.values()}
        if len(models) != 1:
            raise ValueError(f"kv-select calibration needs one model on its edges, the team has {sorted(models)}")
        if not recorder.pairs:
            raise ValueError("no turn read a kv-select context on the calibration tasks: check the team's edges")
        (model,) = models.values()
        scores = context_attention(model.model, recorder.pairs)
        log.info("kv-select calibrated on %d pairs", len(recorder.pairs))
        return replace(self.config, scores=tuple(float(s) for s in scores))

    def stats(self) -> dict:
        if not self.calls:
            return {}
        return {
            "calls": self.calls,
            "latent_tokens": self.latent_tokens,
            "kv_bytes": self.moved_bytes,
            "dropped_tokens": self.dropped_tokens,
            "layers": self.layers_by_spec(),
            "config": asdict(self.config),
        }
