"""The packaged MiniLM sentence encoder: unit vectors, zeros for empty text, and bit-identical embeddings
whatever else is embedded in the same call."""

import pytest
import torch

from kvmesh.llm import ModelNotAvailableError
from kvmesh.llm.embedding import SentenceEncoder, load_encoder


def test_embeddings_are_unit_vectors_and_do_not_depend_on_their_batch():
    texts = [f"Person {i} lives in town number {i * 7}." for i in range(40)] + ["A much longer note. " * 20]
    alone = SentenceEncoder()  # a fresh cache each, so every text is really embedded again
    together = SentenceEncoder()
    first = torch.stack([alone.encode([t])[0] for t in texts])
    second = together.encode(list(reversed(texts))).flip(0)
    assert torch.equal(first, second)
    assert torch.allclose(first.norm(dim=-1), torch.ones(len(texts)))
    similar = first[0] @ first[1]
    assert similar > first[0] @ first[-1]  # near-identical sentences are closer than a different text
    assert torch.equal(alone.encode(["", texts[0]])[0], torch.zeros(alone.dim))
    assert load_encoder() is load_encoder()


def test_an_unknown_encoder_says_what_it_tried(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="folder"):
        SentenceEncoder(str(tmp_path))
