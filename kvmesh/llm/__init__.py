"""Local models: loading by alias, folder or Hugging Face id; chat formatting; batched generation."""

from kvmesh.llm.chat import ChatFormat
from kvmesh.llm.generation import Generation, GenerationRequest
from kvmesh.llm.local import LocalLM, Prefill, load_model
from kvmesh.llm.registry import ALIASES, ModelNotAvailableError

__all__ = [
    "ALIASES",
    "ChatFormat",
    "Generation",
    "GenerationRequest",
    "LocalLM",
    "ModelNotAvailableError",
    "Prefill",
    "load_model",
]
