"""Mapping quality: the receiver's attention outputs over mapped against real caches, per layer, against two
controls (the receiver's own cache of another text, the mapper on another text)."""

import pytest
import torch

from kvmesh.evals.benchmarks.infoqa import generate
from kvmesh.kvcomm.c2c.capture import position_free_kv
from kvmesh.kvcomm.c2c.mappers.base import KVGeometry, KVMapper, MapperConfig
from kvmesh.kvcomm.c2c.mappers.quality import (
    QUALITY_THRESHOLD,
    MapperQualityError,
    attention_outputs,
    check_quality,
    check_recorded,
    mapping_quality,
)
from kvmesh.kvcomm.c2c.mappers.ridge import RidgeMapper, fit_ridge
from kvmesh.training.kv_mappers import aligned_pairs, probe_text, sender_context


def test_attention_outputs_are_causal_windowed_softmax_attention():
    torch.manual_seed(0)
    queries, keys, values = torch.randn(2, 4, 3, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    query_positions, key_positions = torch.tensor([3, 4, 5]), torch.arange(5)
    out = attention_outputs(queries, query_positions, keys, values, key_positions, [0.5, 0.25], [None, 2])
    assert out.shape == (2, 3, 4 * 8)
    for layer, (scale, window) in enumerate([(0.5, None), (0.25, 2)]):
        for p, q_pos in enumerate(query_positions.tolist()):
            for head in range(4):
                seen = [k for k in range(5) if k <= q_pos and (window is None or q_pos - k < window)]
                kv_head = head // 2  # grouped-query attention: two query heads per key head
                logits = keys[layer, kv_head, seen] @ queries[layer, head, p] * scale
                expected = torch.softmax(logits, 0) @ values[layer, kv_head, seen]
                torch.testing.assert_close(out[layer, p, head * 8 : head * 8 + 8], expected)


def _identity(model) -> RidgeMapper:
    geometry = KVGeometry.of(model)
    config = MapperConfig("ridge", model.spec, model.spec, geometry, geometry, layer_map=list(range(geometry.layers)))
    eye = torch.eye(geometry.width).repeat(geometry.layers, 1, 1)
    zero = torch.zeros(geometry.layers, geometry.width)
    return RidgeMapper(config, eye, zero, eye, zero)


class FixedContext(KVMapper):
    """A mapper that carries nothing of what the sender read: whatever it is given, it returns the receiver's own
    real cache of one fixed text (plausible rows, the wrong content)."""

    kind, modes = "ridge", ("transfer",)

    def __init__(self, model, text: str) -> None:
        self.config = _identity(model).config
        self.rows = position_free_kv(model, model.tokenizer(text)["input_ids"])

    def transfer(self, keys, values):
        return self.rows

    def tensors(self):
        return {}

    @classmethod
    def from_tensors(cls, config, tensors):
        raise NotImplementedError


TEXTS = [
    ("Mira's brother is Tavo. Tavo lives in Orvik.", "\nQuestion: Where does Tavo live?\nAnswer:"),
    ("Notes: 12 apples and a pear are in the blue crate.", "\nQuestion: What is in the crate?\nAnswer:"),
    ("Lin works as a judge in Oslo. Bo is her brother.", "\nQuestion: What is Lin's job?\nAnswer:"),
]


def test_a_model_mapped_onto_itself_reads_exactly_its_own_cache_and_beats_both_controls(tiny):
    quality = mapping_quality(_identity(tiny), tiny, tiny, TEXTS)
    assert quality.texts == 3 and quality.probe_tokens > 20
    assert all(c == pytest.approx(1.0, abs=1e-5) for c in quality.per_layer)
    assert all(c < 0.99 for c in quality.wrong_context) and quality.shuffled == pytest.approx(quality.wrong_context)
    assert check_quality(_identity(tiny), tiny, tiny, TEXTS, threshold=0.9, quality=quality) is quality


def test_a_mapper_that_carries_nothing_of_its_context_is_refused_by_the_controls(tiny):
    fixed = FixedContext(tiny, "Ana has a dog. Ana lives in Rome and works as a cook.")
    quality = mapping_quality(fixed, tiny, tiny, TEXTS)
    assert quality.per_layer == pytest.approx(quality.shuffled)  # its output ignores the context it is given
    check_quality(fixed, tiny, tiny, TEXTS, threshold=min(quality.per_layer), quality=quality, margin=None)
    with pytest.raises(MapperQualityError, match="carries too little of its context"):
        check_quality(fixed, tiny, tiny, TEXTS, threshold=min(quality.per_layer), quality=quality)


def test_each_margin_judges_only_its_own_measure(tiny):
    """A trained mapper is judged in nats of validation loss (`loss_margin`), a fitted one in attention-output
    cosine (`margin`): loosening one never lets the other kind through."""
    trained = _identity(tiny)
    trained.config.quality = {"validation_loss": 1.00, "no_context_loss": 1.03, "shuffled_loss": 1.50}
    with pytest.raises(MapperQualityError, match=r"validation loss 1\.000 against 1\.030 when reading nothing"):
        check_recorded(trained)  # 0.03 nats below reading nothing, the default asks 0.05
    with pytest.raises(MapperQualityError, match=r"needs 0\.050 less"):
        check_recorded(trained, margin=-2.0)  # a cosine margin says nothing about losses
    check_recorded(trained, loss_margin=0.02)
    fixed = FixedContext(tiny, "Ana has a dog. Ana lives in Rome and works as a cook.")
    fixed.config.quality = mapping_quality(fixed, tiny, tiny, TEXTS).to_dict()
    with pytest.raises(MapperQualityError, match="carries too little of its context"):
        check_recorded(fixed, threshold=-1.0, loss_margin=-5.0)  # nor a loss margin about cosines
    check_recorded(fixed, threshold=-1.0, margin=-2.0)


@pytest.fixture
def one_thread():
    """Two shared cores: one torch thread is many times faster than two fighting other work for them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_ridge_passes_on_the_real_pair_and_a_random_map_is_refused(one_thread):
    from kvmesh import load_model

    sender, receiver = load_model("gemma3-270m"), load_model("smollm2-135m")
    config = MapperConfig("ridge", sender.spec, receiver.spec, KVGeometry.of(sender), KVGeometry.of(receiver))
    texts = [f"{sender_context(t)}\nAnswer: {t.answer}" for t in generate(20, "train", 0)]
    ridge = fit_ridge(aligned_pairs(sender, receiver, texts), config)
    probes = [(sender_context(t), probe_text(t)) for t in generate(4, "validation", 0)]
    quality = check_quality(ridge, sender, receiver, probes)
    assert quality.mean > QUALITY_THRESHOLD + 0.15 and len(quality.per_layer) == 30
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(30, 256, 192, generator=generator) / 16, torch.zeros(30, 192)] * 2
    random = RidgeMapper(config, weights[0], weights[1], weights[2].clone(), weights[3].clone())
    with pytest.raises(MapperQualityError, match=r"mean cosine -?0\.\d+ < threshold .* per layer 0: "):
        check_quality(random, sender, receiver, probes)
    # the receiver's own real cache of another task's notes: above the threshold, refused by the controls
    fixed = FixedContext(receiver, sender_context(generate(1, "train", 1)[0]))
    fixed.config = config
    fixed_quality = mapping_quality(fixed, sender, receiver, probes)
    assert fixed_quality.mean > QUALITY_THRESHOLD
    with pytest.raises(MapperQualityError, match="carries too little of its context"):
        check_quality(fixed, sender, receiver, probes, quality=fixed_quality)
