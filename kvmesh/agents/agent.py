"""Agent: a named role with its own system prompt and generation settings, on a shared local model.

The model is named by spec (alias, folder or Hugging Face id) or given as any `LanguageModel` (a `LocalLM`, or
another backend); specs load lazily, once per process, so a team of five agents on `smollm2-135m` holds one
copy of the weights.

An agent may run its model with a LoRA adapter (`adapter`: the folder peft's `save_pretrained` wrote, such as a
trained Optima policy). The adapter is loaded onto the shared model when the agent's model is first used, so a
bad one fails before any model call; agents with different adapters over one base model still share its
running batch and every forward pass (`kvmesh.llm.adapters`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from kvmesh.agents.tools import Tool, tool_from_name
from kvmesh.graph.edge import check_agent_name
from kvmesh.llm.adapters import AdapterError, check_adapter
from kvmesh.llm.base import LanguageModel, normalize_stop
from kvmesh.llm.local import load_model

DEFAULT_MODEL = "smollm2-135m"


@dataclass
class Agent:
    """One member of a team.

    Args:
        name: unique within the team; used as the graph node and as `AIMessage.name`.
        role: a short description, also the default system prompt ("You are the <role> ...").
        system_prompt: replaces the default system prompt when given.
        model: a `LanguageModel` (such as `kvmesh.LocalLM`) or a spec for `kvmesh.load_model`.
        max_new_tokens: cap on the tokens this agent generates per turn.
        temperature: 0 for greedy decoding, above 0 to sample.
        stop: extra stop strings for this agent's turns.
        examples: few-shot demonstrations, (user turn, reply) pairs shown as earlier turns of every prompt;
            small models follow an answer format far more reliably from one example than from an instruction.
        tools: `Tool`s (or their names) that may answer a turn without the model or act on its reply;
            see `kvmesh.agents.tools`.
        adapter: a LoRA adapter folder (peft's `save_pretrained` format) this agent's turns run with, stored as
            an absolute path; None runs the base model. Its files are re-read when they change (training).
    """

    name: str
    role: str = "assistant"
    system_prompt: str | None = None
    model: LanguageModel | str = DEFAULT_MODEL
    max_new_tokens: int = 256
    temperature: float = 0.0
    stop: tuple[str, ...] = field(default_factory=tuple)
    examples: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    tools: tuple[Tool, ...] = field(default_factory=tuple)
    adapter: str | None = None

    def __post_init__(self) -> None:
        check_agent_name(self.name)
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(
                f"agent {self.name!r}: max_new_tokens must be a positive integer, got {self.max_new_tokens!r}"
            )
        if not isinstance(self.temperature, int | float) or self.temperature < 0:
            raise ValueError(f"agent {self.name!r}: temperature must be >= 0, got {self.temperature!r}")
        if not isinstance(self.model, str) and not isinstance(self.model, LanguageModel):
            raise TypeError(
                f"agent {self.name!r}: model must be a LanguageModel (such as kvmesh.LocalLM) or a model spec "
                f"string, got {type(self.model).__name__}"
            )
        try:
            self.stop = normalize_stop(self.stop)
        except ValueError as error:
            raise ValueError(f"agent {self.name!r}: {error}") from error
        self.examples = self._examples(self.examples)
        self.tools = tuple(self._tool(t) for t in self.tools)
        if self.adapter is not None:
            if not isinstance(self.adapter, str | Path) or not str(self.adapter).strip():
                raise TypeError(f"agent {self.name!r}: adapter must be a folder path, got {self.adapter!r}")
            self.adapter = str(Path(self.adapter).expanduser().resolve())
        self._checked_adapter: str | None = None  # the adapter last loaded onto the model (not a field)

    def _examples(self, examples) -> tuple[tuple[str, str], ...]:
        pairs = tuple(tuple(pair) for pair in examples) if isinstance(examples, list | tuple) else None
        if pairs is None or not all(len(p) == 2 and all(isinstance(x, str) and x.strip() for x in p) for p in pairs):
            raise ValueError(
                f"agent {self.name!r}: examples must be a list of [user turn, reply] pairs of non-empty strings"
            )
        return pairs

    def _tool(self, tool: Tool | str) -> Tool:
        if isinstance(tool, str):
            try:
                return tool_from_name(tool)
            except ValueError as error:
                raise ValueError(f"agent {self.name!r}: {error}") from error
        if not isinstance(tool, Tool):
            raise TypeError(f"agent {self.name!r}: tools must be Tool instances or tool names, got {tool!r}")
        return tool

    @property
    def llm(self) -> LanguageModel:
        """The loaded model (loads the spec on first use)."""
        if isinstance(self.model, str):
            self.model = load_model(self.model)
        if self.adapter is not None and self._checked_adapter != self.adapter:
            try:
                check_adapter(self.model, self.adapter)
            except AdapterError as error:
                raise AdapterError(f"agent {self.name!r}: {error}") from error
            self._checked_adapter = self.adapter
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
        if self.examples:
            data["examples"] = [list(pair) for pair in self.examples]
        if self.tools:
            data["tools"] = [tool.name for tool in self.tools]
        if self.adapter is not None:
            data["adapter"] = self.adapter
        return data

    @classmethod
    def from_dict(cls, data: dict, default_model: str = DEFAULT_MODEL) -> Agent:
        if not isinstance(data, dict) or "name" not in data:
            raise ValueError(f"an agent entry needs at least a 'name', got {data!r}")
        known = [f.name for f in fields(cls)]
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"agent {data['name']!r}: unknown fields {sorted(unknown)}; known: {known}")
        return cls(**{"model": default_model, **data})
