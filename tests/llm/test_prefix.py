"""The typed prefix cache: buffers a row adopts and fills in place, and the latent span the engine reads from it."""

import pytest
import torch

from kvmesh.llm.base import GenerationRequest, LatentSpan
from kvmesh.llm.layout import dropped_columns, latent_columns
from kvmesh.llm.prefix import PrefixCache


def test_a_row_on_a_prefix_writes_its_rest_into_the_prefix_buffers(tiny):
    ids = tiny.encode_prompt(tiny.render([("user", "Where does the fox sleep?")]))
    (dense,) = tiny.generate_requests([GenerationRequest(ids, 0, keep_kv=True)])
    prefix = PrefixCache.of(dense.prompt_kv.slice(0, 5), ids[5:], spare=3)
    assert (prefix.length, prefix.token_ids, prefix.rest) == (5, tuple(ids[:5]), ids[5:])
    assert prefix.keys.shape[2] == len(ids) + 3 and prefix.latent is None
    (row,) = tiny.generate_requests([GenerationRequest(ids, 0, prefix=prefix)])
    assert row.finish_reason == "prefill"
    torch.testing.assert_close(prefix.keys[:, :, : len(ids)], dense.prompt_kv.keys, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(prefix.values[:, :, : len(ids)], dense.prompt_kv.values, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="starts at position 0"):
        PrefixCache.of(dense.prompt_kv.slice(1, 5), ids[5:])


def test_the_latent_span_gives_the_columns_and_layers_a_row_reads():
    keys = torch.zeros((2, 1, 10, 4))
    plain = PrefixCache(keys, keys.clone(), 6, tuple(range(6)), [6, 7])
    latent, reads = latent_columns(plain, 8, 2, "cpu")
    assert dropped_columns(plain) == [] and not latent.any() and reads.all()
    shared = PrefixCache(
        keys, keys.clone(), 6, tuple(range(6)), [6, 7], LatentSpan(1, 5, frozenset({1}), frozenset({3, 2}))
    )
    latent, reads = latent_columns(shared, 8, 2, "cpu")
    assert dropped_columns(shared) == [2, 3]
    assert latent.tolist() == [[False, True, True, True, True, False, False, False]]
    assert reads.tolist() == [[False, True]]


def test_a_channels_assembly_is_a_prefix_cache_with_its_own_fields():
    from kvmesh.kvcomm.assembly import Assembly

    keys = torch.zeros((2, 1, 10, 4))
    span = LatentSpan(1, 3, frozenset({0}))
    built = Assembly(keys, keys.clone(), 4, (1, 2, 3, 4), [5], 0.5, 2, span)
    assert isinstance(built, PrefixCache)
    assert (built.seconds, built.reused_tokens, built.latent) == (0.5, 2, span)
    assert Assembly(keys, keys.clone(), 4, (1, 2, 3, 4), [5]).reused_tokens == 4  # default: all came from caches
    request = GenerationRequest([1, 2, 3, 4, 5], 2, prefix=built)
    assert request.prefix.latent is span
