"""Latent thoughts (LatentMAS): a row feeds its last hidden state back as its next input instead of a token.

    realign = Realignment.of(model)          # once per model: (d, d) matrix and the input embeddings' mean norm
    inputs = realign(hidden)                 # (B, d) final hidden states -> (B, d) input embeddings

A model's last hidden state h (after the final norm: what the LM head reads) lives in the output embedding
space; the input layer expects vectors like its token embeddings. LatentMAS maps one into the other with the
least-squares map from output to input embeddings, M = (W_outᵀ W_out + λ I)⁻¹ W_outᵀ W_in (W: (V, d), a row per
token), and rescales each mapped vector to the mean norm of the input embeddings. With tied embeddings
(W_out = W_in) M is the identity up to λ and only the rescale acts; with untied ones M does the work. W_in here
is what the input layer really outputs (Gemma scales its embeddings by √d inside the embedding module), computed
in chunks of the vocabulary so that no (V, d) copy is made for large vocabularies.

A row with `GenerationRequest.latent_steps = N` runs N such steps after its prompt (`kvmesh.llm.engine`): each
appends one position to its cache, and those positions follow the prompt's in `Generation.prompt_kv`, with
`THOUGHT` as their token id (no token stands there; nothing may embed one).

Caveat: λ is relative to the mean eigenvalue of W_outᵀ W_out (1e-5, as LatentMAS's absolute 1e-5 on models
whose embeddings have unit-scale rows); float64 solves keep M exact to rounding on 135M-270M models.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import ClassVar

import torch

THOUGHT = -1  # the token id of a latent thought position: not a token, so nothing may embed it
RIDGE = 1e-5
CHUNK = 16384  # vocabulary rows embedded at once while the map is built


@dataclass(frozen=True)
class Realignment:
    """From final hidden states to input embeddings: `matrix` (d, d) and `norm`, the input embeddings' mean norm."""

    matrix: torch.Tensor
    norm: float

    @classmethod
    @torch.no_grad()
    def of(cls, model, ridge: float = RIDGE) -> Realignment:
        """The realignment of a transformers causal LM (its input embedding module and LM head)."""
        embed, head = model.get_input_embeddings(), model.get_output_embeddings()
        out = head.weight.detach().double()  # (V, d)
        vocab, width = out.shape
        cross = torch.zeros((width, width), dtype=torch.float64, device=out.device)
        norms = 0.0
        for start in range(0, vocab, CHUNK):
            ids = torch.arange(start, min(start + CHUNK, vocab), device=out.device)
            rows = embed(ids).double()  # (chunk, d): what the input layer really feeds, any scaling included
            cross += out[start : start + len(ids)].T @ rows
            norms += float(rows.norm(dim=-1).sum())
        gram = out.T @ out
        gram += ridge * gram.diagonal().mean() * torch.eye(width, dtype=torch.float64, device=out.device)
        matrix = torch.linalg.solve(gram, cross)
        return cls(matrix.to(head.weight.dtype), norms / vocab)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., d) final hidden states -> (..., d) input embeddings of the input embeddings' mean norm."""
        mapped = hidden.to(self.matrix.dtype) @ self.matrix
        return mapped * (self.norm / mapped.norm(dim=-1, keepdim=True).clamp_min(1e-6))


class LastHidden:
    """The decoder's output at each row's last position after the model's latest forward pass, (B, d), detached.
    One per model (`of`): a forward hook on its decoder, registered once however many runners share the model."""

    _by_model: ClassVar[weakref.WeakKeyDictionary] = weakref.WeakKeyDictionary()

    def __init__(self, model) -> None:
        self.value: torch.Tensor | None = None
        self.handle = model.get_decoder().register_forward_hook(self._keep)

    def _keep(self, module, args, output) -> None:
        self.value = output.last_hidden_state[:, -1].detach().clone()  # the rest of the output is freed

    @classmethod
    def of(cls, model) -> LastHidden:
        if model not in cls._by_model:
            cls._by_model[model] = cls(model)
        return cls._by_model[model]
