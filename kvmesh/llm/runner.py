"""The model runner: what the engine knows about one model, and its one forward pass over a batch of rows.

`ModelRunner` holds one model's weights, tokenizer and special tokens, runs a forward pass (with per-layer hidden
columns, per-row adapters and input embeddings in place of tokens when asked) and finds stop strings in a row's
text. Each pass returns the last position's logits and its final hidden state (after the model's last norm, what
the LM head reads): latent thoughts feed that state back (`kvmesh.llm.thoughts`). It keeps no rows: the running
batch (`kvmesh.llm.engine.LocalRunningBatch`) admits, prefills, steps and retires them, and every running batch
of a model shares its one runner, so `busy_s` adds up the engine time of all of them.

Shapes: B = rows in the batch, W = cache width (longest row incl. its left padding), V = vocabulary,
L = layers, d = hidden width.
"""

from __future__ import annotations

import contextlib

import torch

from kvmesh.llm.adapters import adapters_of
from kvmesh.llm.cache import cache_argument, can_merge
from kvmesh.llm.layer_mask import use_layer_masks
from kvmesh.llm.rows import Row
from kvmesh.llm.thoughts import LastHidden, Realignment


class ModelRunner:
    """What the engine needs to know about one model: its weights, tokenizer and special tokens.

    `busy_s` adds up the seconds spent inside `LocalRunningBatch.step` (prefill, decode, cache bookkeeping) for
    this model, so callers can tell engine time from everything else.
    """

    def __init__(self, model, tokenizer, eos_ids: set[int], pad_id: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self.mergeable = can_merge(model.config)  # False for sliding-window models: no joining mid-flight
        self.context_length: int | None = getattr(model.config, "max_position_embeddings", None)
        self.layers = model.config.num_hidden_layers
        self.layer_masks = use_layer_masks(model)  # False: an attention kernel without a dense mask
        self.eos_index = torch.tensor(sorted(eos_ids), dtype=torch.long)
        self.busy_s = 0.0
        self._realignment: Realignment | None = None  # built on the first latent thought
        self._last_hidden = LastHidden.of(model)

    def thought_inputs(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, d) final hidden states -> (B, 1, d) input embeddings: the rows' next latent thoughts."""
        if self._realignment is None:
            self._realignment = Realignment.of(self.model)
        return self._realignment(hidden)[:, None].to(self.model.dtype)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, d) input embeddings, as the model's input layer makes them."""
        return self.model.get_input_embeddings()(ids)

    def text(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def stop_hit(self, row: Row) -> bool:
        """Check the tail of the generated text for a stop string; cut the text there if found."""
        stops = row.request.stop
        if not stops:
            return False
        window = max(len(s.encode()) for s in stops) + 2  # a stop string of b bytes spans at most b tokens
        tail = self.tokenizer.decode(row.generated[-window:], skip_special_tokens=True)
        if not any(s in tail for s in stops):
            return False
        text = self.text(row.generated)
        cuts = [text.find(s) for s in stops if s in text]
        if not cuts:
            return False
        row.text = text[: min(cuts)]
        return True

    def forward(
        self, ids, mask, positions, cache, latent=None, reads=None, adapters=None, embeds=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass; returns the last position's logits (B, V) and final hidden state (B, d). `latent`
        (B, W) and `reads` (B, L): the columns only some layers read, and which layers of each row read them;
        `adapters`: B adapter names; `embeds` (B, T, d): input embeddings to read instead of `ids`."""
        hidden = self.hidden(latent, reads) if latent is not None else {}
        selection = adapters_of(self.model).selecting(adapters) if adapters else contextlib.nullcontext()
        inputs = {"input_ids": ids} if embeds is None else {"inputs_embeds": embeds}
        with selection:
            out = self.model(
                **inputs,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **cache_argument(self.model, cache),
                logits_to_keep=1,
                **({"hidden": hidden} if hidden else {}),
            )
        return out.logits[:, -1, :], self._last_hidden.value

    def hidden(self, latent: torch.Tensor, reads: torch.Tensor) -> dict[int, torch.Tensor]:
        """{layer: (B, W) columns it must skip} for the layers that skip any."""
        if not bool(latent.any()):
            return {}
        if not self.layer_masks:
            raise NotImplementedError(
                f"{self.model.config._attn_implementation} attention takes no dense mask, so some layers cannot skip "
                "latent columns; load the model with attn_implementation='sdpa' or 'eager'"
            )
        skip = latent[:, None, :] & ~reads[:, :, None]  # (B, L, W)
        return {layer: skip[:, layer] for layer in range(self.layers) if bool(skip[:, layer].any())}
