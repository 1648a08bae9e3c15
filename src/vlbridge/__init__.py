"""vlbridge: LLaVA-family vision-language models (vision encoder + connector + LLM) as one system.

Public API only; heavy modules load on first use so `import vlbridge` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "connectors", "from_parts", "load"]

if TYPE_CHECKING:
    from vlbridge.model.processor import Processor
    from vlbridge.model.vlm import VisionLanguageModel


def load(
    path: str | None = None, vision: bool = True, device: str = "cpu", dtype: Any = None, quantize: str | None = None
) -> tuple[VisionLanguageModel, Processor]:
    """Load a model and its processor from a vlbridge or HF llava-layout directory (None: the embedded default);
    `quantize="int8"` gives int8 weight-only LM layers (a checkpoint saved quantised loads as int8 regardless)."""
    from vlbridge.model.io import load as _load

    return _load(path, vision=vision, device=device, dtype=dtype, quantize=quantize)


def from_parts(
    language_model: str, vision_encoder: str, connector: Any = None
) -> tuple[VisionLanguageModel, Processor]:
    """A model from a text LLM directory (HF Llama/Mistral/Qwen2) and a CLIP/SigLIP tower directory with a new
    connector (a ConnectorConfig; default LLaVA-1.5's mlp): LLaVA's starting point (vlbridge.model.parts)."""
    from vlbridge.model.parts import from_parts as _from_parts

    return _from_parts(language_model, vision_encoder, connector=connector)


def __getattr__(name: str) -> Any:
    if name in ("connectors", "eval"):
        import importlib

        return importlib.import_module(f"vlbridge.{name}")
    raise AttributeError(f"module 'vlbridge' has no attribute {name!r}")
