"""Next-token objectives: `causal_lm` trains the VLM on supervised (assistant) tokens with images spliced in (LLaVA
stages 1 and 2); `text_lm` pre-trains the language model alone on plain text (stage 0 for a from-scratch LM)."""

from __future__ import annotations

from vlbridge.lm.loss import IGNORE_INDEX, causal_lm_loss
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.train.objectives.base import Batch, Objective, ObjectiveOutput


class CausalLMObjective(Objective):
    """Next-token loss of the VLM on the batch's labels (-100: not supervised)."""

    def forward(self, model: VisionLanguageModel, batch: Batch) -> ObjectiveOutput:
        loss = model.loss(
            input_ids=batch["input_ids"],
            labels=batch["labels"],
            attention_mask=batch.get("attention_mask"),
            pixel_values=batch.get("pixel_values"),
            image_sizes=batch.get("image_sizes"),
            video_frames=batch.get("video_frames"),
        )
        return ObjectiveOutput(loss, int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0)


class TextLMObjective(Objective):
    """Next-token loss of the language model alone on text; labels default to the ids with padding ignored."""

    def forward(self, model: VisionLanguageModel, batch: Batch) -> ObjectiveOutput:
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        labels = batch.get("labels")
        if labels is None:
            labels = ids if mask is None else ids.masked_fill(mask == 0, IGNORE_INDEX)
        hidden = model.language_model(input_ids=ids, attention_mask=mask, return_hidden=True)  # (B, T, D)
        loss = causal_lm_loss(hidden, labels, model.language_model.head)
        return ObjectiveOutput(loss, int(ids.numel() if mask is None else mask.sum()))
