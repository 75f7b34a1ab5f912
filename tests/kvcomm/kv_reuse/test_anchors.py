"""The anchor pool: bounded, evicts the least-used of the oldest, decides reuse by distance, and keeps on disk."""

import json

import pytest
import torch

from kvmesh.kvcomm.kv_reuse.anchors import FORMAT, MANIFEST, AnchorFolder, AnchorPool, describe
from kvmesh.runs import write_atomic


def offsets(value, tokens=4, layers=2):
    return torch.full((layers, 1, tokens, 2), float(value)), torch.full((layers, 1, tokens, 2), -float(value))


def unit(*values):
    vector = torch.tensor(values, dtype=torch.float)
    return vector / vector.norm()


def test_no_anchor_or_only_far_anchors_mean_prefill():
    pool = AnchorPool(gamma=0.3, min_anchors=1)
    assert pool.weights("task", unit(1, 0)) is None
    pool.add("task", unit(1, 0), *offsets(1))
    assert torch.equal(pool.weights("task", unit(1, 0.1)), torch.tensor([1.0]))
    assert pool.weights("task", unit(0, 1)) is None  # distance sqrt(2) > gamma: new kind of text, prefill
    assert pool.weights("other", unit(1, 0)) is None  # pools are per placeholder


def test_a_placeholder_is_reused_only_after_min_anchors_dense_calls():
    pool = AnchorPool(min_anchors=3)
    for i in range(3):
        assert pool.weights("k", unit(1, 0)) is None
        pool.add("k", unit(1, i * 0.01), *offsets(i))
    assert pool.weights("k", unit(1, 0)) is not None
    with pytest.raises(ValueError, match="positive"):
        AnchorPool(max_anchors=2, min_anchors=3)


def test_similar_anchors_are_averaged_and_far_ones_ignored():
    pool = AnchorPool(gamma=0.3, temperature=0.1, min_anchors=1)
    pool.add("k", unit(1, 0.00), *offsets(1))
    pool.add("k", unit(1, 0.02), *offsets(2))
    pool.add("k", unit(0, 1), *offsets(3))
    weights = pool.weights("k", unit(1, 0.01))
    assert weights[0].item() == pytest.approx(weights[1].item(), rel=1e-3) and weights[2].item() < 1e-5
    assert weights.sum().item() == pytest.approx(1.0)


def test_offsets_are_position_aligned_weighted_and_skip_layer_zero():
    pool = AnchorPool()
    pool.add("k", unit(1, 0), *offsets(1, tokens=3))
    pool.add("k", unit(1, 0), *offsets(3, tokens=5))
    key_offset, value_offset = torch.zeros(2, 1, 6, 2), torch.zeros(2, 1, 6, 2)
    pool.apply("k", torch.tensor([0.5, 0.5]), key_offset, value_offset)
    assert key_offset.shape == (2, 1, 6, 2)
    assert torch.all(key_offset[0] == 0) and torch.all(value_offset[0] == 0)  # layer 0 is exact: never corrected
    assert torch.allclose(key_offset[1, 0, :3, 0], torch.tensor([2.0, 2.0, 2.0]))  # both anchors cover these
    assert torch.allclose(key_offset[1, 0, 3:5, 0], torch.tensor([1.5, 1.5]))  # only the longer one
    assert torch.all(key_offset[1, 0, 5] == 0)  # past every anchor: no correction
    assert torch.allclose(value_offset[1, 0, :3, 0], torch.tensor([-2.0, -2.0, -2.0]))
    assert [a.uses for a in pool.pools["k"]] == [1, 1]


def test_count_length_and_memory_bounds_with_eviction():
    pool = AnchorPool(max_anchors=3, max_tokens=2)
    for i in range(3):
        pool.add("k", unit(1, i), *offsets(i, tokens=10))
    pool.apply("k", torch.tensor([1.0, 0.0, 0.0]), torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2))  # uses the oldest
    pool.add("k", unit(1, 3), *offsets(3, tokens=10))
    kept = pool.pools["k"]
    assert len(kept) == 3 and pool.evicted == 1
    assert kept[0].key_offset[1, 0, 0, 0].item() == 0  # the used oldest survived; the unused second went
    assert [a.key_offset[1, 0, 0, 0].item() for a in kept] == [0, 2, 3]
    assert kept[0].key_offset.shape[2] == 2 and kept[0].key_offset.dtype == torch.float16
    one = kept[0].nbytes
    small = AnchorPool(max_bytes=2 * one + 1, min_anchors=1)
    for i in range(5):
        small.add(("k", i % 2), unit(1, i), *offsets(i, tokens=2))
    assert len(small) == 2 and small.nbytes <= 2 * one + 1
    # over the byte budget, a placeholder above min_anchors gives way before one at it
    spared = AnchorPool(max_bytes=4 * one + 1, min_anchors=2)
    for i in range(3):
        spared.add("crowded", unit(1, i), *offsets(i, tokens=2))
    spared.add("thin", unit(1, 0), *offsets(0, tokens=2))
    spared.add("thin", unit(1, 1), *offsets(1, tokens=2))
    assert (len(spared.pools["crowded"]), len(spared.pools["thin"])) == (2, 2)


def test_describe_is_a_unit_vector_over_layers_heads_and_dims():
    keys = torch.randn(3, 2, 7, 4)
    descriptor = describe(keys)
    assert descriptor.shape == (3 * 2 * 4,) and descriptor.norm().item() == pytest.approx(1.0)


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="gamma"):
        AnchorPool(gamma=3)
    with pytest.raises(ValueError, match="positive"):
        AnchorPool(max_anchors=0)


# --- on disk ---------------------------------------------------------------------------------------------------

IDENTITY = {"model": "m", "fingerprint": {"layers": 2, "kv_heads": 1, "head_dim": 2, "dtype": "float32"}, "sink": [1]}


def filled(**bounds):
    """A pool with keys shaped like the engine's (receiver, piece key), one anchor of it used."""
    pool = AnchorPool(min_anchors=1, **bounds)
    for i in range(3):
        pool.add((("b", 0), "task"), unit(1, i), *offsets(i, tokens=6))
    pool.add((("b", 0), ("glue", (7, 8))), unit(0, 1), *offsets(5, tokens=3))
    pool.apply((("b", 0), "task"), torch.tensor([0.0, 1.0, 0.0]), torch.zeros(2, 1, 6, 2), torch.zeros(2, 1, 6, 2))
    return pool


def test_a_pool_saved_to_a_folder_loads_back_within_the_current_bounds(tmp_path):
    pool = filled()
    file = AnchorFolder(tmp_path).save(IDENTITY, pool, {"max_anchors": 20})
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["format"] == FORMAT and manifest["pools"]["m"]["file"] == file.name
    assert manifest["pools"]["m"]["anchors"] == 4 and manifest["pools"]["m"]["settings"] == {"max_anchors": 20}
    again = AnchorPool(min_anchors=1)
    assert AnchorFolder(tmp_path).load(IDENTITY, again) == 4 and again.nbytes == pool.nbytes
    for key, anchors in pool.pools.items():  # keys, offsets, ages and use counts as they were
        assert [(a.born, a.uses) for a in again.pools[key]] == [(a.born, a.uses) for a in anchors]
        for a, b in zip(anchors, again.pools[key], strict=True):
            assert torch.equal(a.key_offset, b.key_offset) and torch.equal(a.descriptor, b.descriptor)
    # tighter bounds apply on load: anchors are cut to max_tokens, and the used one outlives the others
    small = AnchorPool(max_anchors=1, max_tokens=2, min_anchors=1)
    assert AnchorFolder(tmp_path).load(IDENTITY, small) == 2
    (kept,) = small.pools[(("b", 0), "task")]
    assert kept.uses == 1 and kept.key_offset.shape[2] == 2 and small.evicted == 2
    assert AnchorFolder(tmp_path / "empty").load(IDENTITY, AnchorPool()) == 0  # nothing saved there yet


def test_a_folder_refuses_pools_of_another_model_layout_or_format(tmp_path):
    AnchorFolder(tmp_path).save(IDENTITY, filled())
    with pytest.raises(ValueError, match=r"made for 'm', not 'other'.*another anchors_dir.*or delete"):
        AnchorFolder(tmp_path).check_model("other")
    assert AnchorFolder(tmp_path).load({**IDENTITY, "model": "other"}, AnchorPool()) == 0  # none saved for it
    layout = {**IDENTITY, "fingerprint": {**IDENTITY["fingerprint"], "layers": 30}, "sink": [2]}
    with pytest.raises(ValueError, match=r"fingerprint\.layers 2, now 30; sink \[1\], now \[2\]"):
        AnchorFolder(tmp_path).load(layout, AnchorPool())
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    (tmp_path / MANIFEST).write_text(json.dumps({**manifest, "format": FORMAT + 1}))
    with pytest.raises(ValueError, match=f"format {FORMAT + 1}, this kvmesh reads format {FORMAT}"):
        AnchorFolder(tmp_path).load(IDENTITY, AnchorPool())


def test_a_crash_while_saving_leaves_the_last_complete_save(tmp_path):
    AnchorFolder(tmp_path).save(IDENTITY, filled())
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}

    def crash(out):
        out.write(b"half a file")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / MANIFEST, crash)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before  # no temporary file left
    # a hard crash (no cleanup) leaves a stray temporary file beside each complete one: loading never reads it
    for name in before:
        (tmp_path / f".{name}.k3x9.tmp").write_bytes(b"\x80\x02torn")
    assert AnchorFolder(tmp_path).load(IDENTITY, AnchorPool(min_anchors=1)) == 4
    # a pool file cut short some other way is refused, saying which file and how to start afresh
    pool_file = tmp_path / json.loads((tmp_path / MANIFEST).read_text())["pools"]["m"]["file"]
    pool_file.write_bytes(pool_file.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"cannot read anchors {pool_file}.*delete"):
        AnchorFolder(tmp_path).load(IDENTITY, AnchorPool())


def test_saved_files_have_the_permissions_any_new_file_gets(tmp_path):
    import os

    write_atomic(tmp_path / "manifest.json", lambda file: file.write(b"{}"))
    (tmp_path / "plain").write_bytes(b"{}")
    assert (tmp_path / "manifest.json").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
    assert set(os.listdir(tmp_path)) == {"manifest.json", "plain"}  # no temporary file left
