"""Agent: a named role with its own system prompt and generation settings, on a shared local model.

The model is named by spec (alias, folder or Hugging Face id) or given as a `LocalLM`; specs load lazily, once
per process, so a team of five agents on `smollm2-135m` holds one copy of the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvmesh.llm import LocalLM, load_model
from kvmesh.llm.generation import normalize_stop

DEFAULT_MODEL = "smollm2-135m"


@dataclass
class Agent:
    """One member of a team.

    Args:
        name: unique within the team; used as the graph node and as `AIMessage.name`.
        role: a short description, also the default system prompt ("You are the <role> ...").
        system_prompt: replaces the default system prompt when given.
        model: a `LocalLM` or a spec for `kvmesh.load_model`.
        max_new_tokens: cap on the tokens this agent generates per turn.
        temperature: 0 for greedy decoding, above 0 to sample.
        stop: extra stop strings for this agent's turns.
    """

    name: str
    role: str = "assistant"
    system_prompt: str | None = None
    model: LocalLM | str = DEFAULT_MODEL
    max_new_tokens: int = 256
    temperature: float = 0.0
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or self.name != self.name.strip():
            raise ValueError(f"agent name must be a non-empty string without surrounding spaces, got {self.name!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(
                f"agent {self.name!r}: max_new_tokens must be a positive integer, got {self.max_new_tokens!r}"
            )
        if not isinstance(self.temperature, int | float) or self.temperature < 0:
            raise ValueError(f"agent {self.name!r}: temperature must be >= 0, got {self.temperature!r}")
        if not isinstance(self.model, LocalLM | str):
            raise TypeError(f"agent {self.name!r}: model must be a LocalLM or a model spec string")
        try:
            self.stop = normalize_stop(self.stop)
        except ValueError as error:
            raise ValueError(f"agent {self.name!r}: {error}") from error

    @property
    def llm(self) -> LocalLM:
        """The loaded model (loads the spec on first use)."""
        if isinstance(self.model, str):
            self.model = load_model(self.model)
        return self.model

    @property
    def model_spec(self) -> str:
        return self.model if isinstance(self.model, str) else self.model.spec

    def system_text(self) -> str:
        if self.system_prompt:
            return self.system_prompt
        return f"You are the {self.role} in a team of agents. Be brief and precise."

    def to_dict(self) -> dict:
        data = {"name": self.name, "role": self.role, "model": self.model_spec}
        if self.system_prompt:
            data["system_prompt"] = self.system_prompt
        data |= {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature}
        if self.stop:
            data["stop"] = list(self.stop)
        return data

    @classmethod
    def from_dict(cls, data: dict, default_model: str = DEFAULT_MODEL) -> Agent:
        if not isinstance(data, dict) or "name" not in data:
            raise ValueError(f"an agent entry needs at least a 'name', got {data!r}")
        unknown = set(data) - {
            "name",
            "role",
            "system_prompt",
            "model",
            "max_new_tokens",
            "temperature",
            "stop",
        }
        if unknown:
            raise ValueError(f"agent {data['name']!r}: unknown fields {sorted(unknown)}")
        return cls(**{"model": default_model, **data})
