"""CLIP-style image and caption embeddings of a VisionLanguageModel, through a small contrastive head.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (2021). The head holds the
two projections into a shared space and the learnable temperature (CLIP's logit scale). The `contrastive` training
objective (vlbridge.train.objectives.contrastive) trains it; `vlbridge data filter` (vlbridge.data.hygiene) scores
image-caption pairs with it, so both embed images and captions the same way, here.

Text embeddings: a causal LM has no CLS token, so a caption is embedded as the mean of the LM's final (normed) hidden
states over its real tokens. Image embeddings are the ViT's pooled output (CLIP: the post-LN CLS token). Both are
projected and L2-normalised. A trained head is saved beside its stage's model as `contrastive_head.safetensors`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from vlbridge.atomic import write_safetensors
from vlbridge.errors import CheckpointError, ConfigError
from vlbridge.files import open_safetensors
from vlbridge.model.vlm import VisionLanguageModel

HEAD_FILE = "contrastive_head.safetensors"
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the logit scale at 100


class ContrastiveHead(nn.Module):
    """Both projections and the learnable temperature."""

    def __init__(self, vision_size: int, text_size: int, embed_size: int = 256, init_temperature: float = 0.07) -> None:
        super().__init__()
        self.image_proj = nn.Linear(vision_size, embed_size, bias=False)
        self.text_proj = nn.Linear(text_size, embed_size, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor([math.log(1.0 / init_temperature)]))  # 1-D: FSDP shards it

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped at 100 as CLIP does: the inverse softmax temperature."""
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def embed_images(self, model: VisionLanguageModel, pixel_values: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings (B, E)."""
        if model.vision_encoder is None:
            raise ConfigError("contrastive embeddings need a vision encoder; build or load the model with vision")
        return F.normalize(self.image_proj(model.vision_encoder.pooled(pixel_values)), dim=-1)

    def embed_texts(self, model: VisionLanguageModel, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unit-norm caption embeddings (B, E): the masked mean of the LM's final hidden states, projected."""
        hidden = model.language_model(input_ids=input_ids, attention_mask=mask, return_hidden=True)  # (B, T, D)
        weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (B, D)
        return F.normalize(self.text_proj(pooled), dim=-1)

    def save(self, path: str | Path) -> None:
        """Write the head's weights (safetensors, atomically)."""
        tensors = {name: t.detach().float().cpu().contiguous() for name, t in self.state_dict().items()}
        write_safetensors(path, tensors)

    @classmethod
    def load(cls, path: str | Path) -> ContrastiveHead:
        """A head saved by `save`, sized from its weights; CheckpointError when the file is missing or not a head."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(
                f"{path} does not exist: score with the folder of a stage trained by the contrastive objective "
                f"(it holds model/ and {HEAD_FILE})"
            )
        with open_safetensors(path) as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (safe_open has no iter)
        expected = {"image_proj.weight", "text_proj.weight", "logit_scale"}
        if set(tensors) != expected:
            raise CheckpointError(f"{path} holds {sorted(tensors)}, not a contrastive head ({sorted(expected)})")
        embed, vision = tensors["image_proj.weight"].shape
        head = cls(vision, tensors["text_proj.weight"].shape[1], embed)
        head.load_state_dict(tensors)
        return head
