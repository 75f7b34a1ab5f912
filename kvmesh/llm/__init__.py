"""The model side: the `LanguageModel` protocol, in-process Hugging Face models, chat formatting, the engine."""

from kvmesh.llm.base import Generation, GenerationRequest, KVModel, LanguageModel, RunningBatch
from kvmesh.llm.chat import ChatFormat
from kvmesh.llm.local import LocalLM, load_model
from kvmesh.llm.registry import ALIASES, ModelNotAvailableError

__all__ = [
    "ALIASES",
    "ChatFormat",
    "Generation",
    "GenerationRequest",
    "KVModel",
    "LanguageModel",
    "LocalLM",
    "ModelNotAvailableError",
    "RunningBatch",
    "load_model",
]
