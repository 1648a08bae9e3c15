"""The `distill` objective: knowledge distillation from a frozen teacher into a smaller student (Hinton, Vinyals and
Dean, "Distilling the Knowledge in a Neural Network", 2015).

On the supervised (assistant) positions only, the loss mixes the KL divergence of the student's next-token
distribution from the teacher's, both softened by a temperature T, with the usual cross-entropy on the labels:

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)

T^2 keeps the soft term's gradients on the scale of the hard one's as T changes (Hinton et al., section 2). The KL
is summed over the vocabulary and averaged over the supervised positions, as the cross-entropy is.

The teacher is loaded once when the stage starts (fp32, bf16, or int8 weight-only through `vlbridge.load(...,
quantize="int8")`), frozen and in eval mode, and runs without gradients; it is held outside the module tree, so it
never reaches the optimiser, the stage's checkpoints or a distributed wrapper. Teacher and student must share the
tokenizer (checked when the teacher is loaded). Their visual token counts may differ (a student with a coarser patch
grid or another connector): the batch is made for the student, so every image's run of student placeholders is
re-spanned to the teacher's count before the teacher sees it, and the two are compared position by position on the
supervised text tokens, which must then be the same tokens in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from vlbridge.config import bounded
from vlbridge.data.collate import pad
from vlbridge.errors import ConfigError, DataError
from vlbridge.lm.loss import IGNORE_INDEX
from vlbridge.model.io import load
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.train.objectives.base import Batch, Objective, ObjectiveOutput

if TYPE_CHECKING:  # the recipe holds DistillOptions, so it imports this module
    from vlbridge.train.recipe import StageRecipe

TEACHER_DTYPES = ("fp32", "bf16", "int8")


@dataclass(frozen=True)
class DistillOptions:
    """A distill stage's settings (the stage's `distill:` section)."""

    teacher: str | None = None  # the teacher checkpoint folder (vlbridge or HF llava); None: the embedded default
    temperature: float = field(default=2.0, metadata=bounded(0, low_open=True))  # T: both distributions softened
    alpha: float = field(default=0.5, metadata=bounded(0, 1))  # the KL term's weight; the cross-entropy gets 1 - alpha
    teacher_dtype: str = "fp32"  # fp32 | bf16 | int8 (int8 weight-only LM linears, activations float)

    def validate(self, where: str) -> None:
        """ConfigError naming `where` for a teacher dtype not in TEACHER_DTYPES (the recipe reader checks ranges)."""
        if self.teacher_dtype not in TEACHER_DTYPES:
            raise ConfigError(
                f"{where}.teacher_dtype is {self.teacher_dtype!r}; choose one of {', '.join(TEACHER_DTYPES)}"
            )


def distill_loss(
    student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, targets), for
    logits (N, V) of N supervised positions and their targets (N,); the KL summed over V and averaged over N."""
    if student.shape != teacher.shape:
        raise DataError(
            f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ: teacher and "
            "student must share the tokenizer and be compared on the same supervised positions"
        )
    hard = F.cross_entropy(student.float(), targets)
    if alpha == 0:
        return hard
    log_student = F.log_softmax(student.float() / temperature, dim=-1)  # (N, V)
    log_teacher = F.log_softmax(teacher.float() / temperature, dim=-1)  # (N, V)
    soft = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return alpha * temperature**2 * soft + (1 - alpha) * hard


def respan_images(batch: Batch, image_token_id: int, student_tokens: int, teacher_tokens: int) -> Batch:
    """The batch's input_ids, attention_mask and labels (B, T) with each image's run of `student_tokens`
    placeholders made `teacher_tokens` long (unlabelled), right-padded; other keys as they are."""
    if student_tokens == teacher_tokens:
        return batch
    ids, labels = batch["input_ids"], batch["labels"]
    mask = batch.get("attention_mask", torch.ones_like(ids)).bool()
    rows_ids, rows_labels = [], []
    for row_ids, row_labels, row_mask in zip(ids.unbind(0), labels.unbind(0), mask.unbind(0), strict=True):
        real, real_labels = row_ids[row_mask], row_labels[row_mask]  # (L,) the row without its padding
        spans, lengths = torch.unique_consecutive(real == image_token_id, return_counts=True)
        pieces_ids, pieces_labels, start = [], [], 0
        for image, length in zip(spans.tolist(), lengths.tolist(), strict=True):
            if image:
                if length % student_tokens:
                    raise DataError(
                        f"a run of {length} image placeholders is not a whole number of the student's "
                        f"{student_tokens} tokens per image; build the batch with the student's processor"
                    )
                n = length // student_tokens * teacher_tokens
                pieces_ids.append(real.new_full((n,), image_token_id))
                pieces_labels.append(real.new_full((n,), IGNORE_INDEX))
            else:
                pieces_ids.append(real[start : start + length])
                pieces_labels.append(real_labels[start : start + length])
            start += length
        rows_ids.append(torch.cat(pieces_ids))
        rows_labels.append(torch.cat(pieces_labels))
    return {
        **batch,
        "input_ids": pad(rows_ids, 0),  # padding is masked out: any id in the vocabulary does
        "labels": pad(rows_labels, IGNORE_INDEX),
        "attention_mask": pad([torch.ones_like(row) for row in rows_ids], 0),
    }


@dataclass
class Teacher:
    """The frozen teacher and the visual tokens it gives one image (0 without vision). A plain holder, not a module:
    the teacher stays out of the stage's parameters, checkpoints and train/eval switches."""

    model: VisionLanguageModel
    tokens_per_image: int


def _tokens_per_image(model: VisionLanguageModel) -> int:
    """Visual tokens one image takes in `model`'s sequence (0 without vision); AnyRes models are refused, as their
    counts depend on each image's size and cannot be re-spanned from the batch alone."""
    if not model.has_vision:
        return 0
    if model.pinpoints is not None:
        raise ConfigError("the distill objective supports fixed-size images only; AnyRes teachers or students are not")
    side = model.config.image_processor.crop_size
    return model.tokens_per_image(side, side)


def load_teacher(options: DistillOptions, student: VisionLanguageModel, dataset: Dataset | None) -> Teacher:
    """The teacher checkpoint on the student's device, frozen and in eval mode; ConfigError when it cannot teach
    this student (another tokenizer or vocabulary, another image preprocessing, or no vision for a vision student)."""
    quantize = "int8" if options.teacher_dtype == "int8" else None
    dtype = "bf16" if options.teacher_dtype == "bf16" else None
    model, processor = load(options.teacher, device=student.device, dtype=dtype, quantize=quantize)
    model.eval().requires_grad_(False)
    name = options.teacher or "the embedded default"
    s_lm, t_lm = student.config.language_model, model.config.language_model
    if s_lm.vocab_size != t_lm.vocab_size:
        raise ConfigError(
            f"teacher {name} has a {t_lm.vocab_size}-token vocabulary, the student {s_lm.vocab_size}: teacher and "
            "student must share the tokenizer (set the recipe's tokenizer.path to the teacher's folder)"
        )
    student_processor = getattr(dataset, "processor", None)
    if student_processor is not None and student_processor.tokenizer.to_json() != processor.tokenizer.to_json():
        raise ConfigError(
            f"teacher {name} and the student use different tokenizers: they must share one (set the recipe's "
            "tokenizer.path to the teacher's folder)"
        )
    if student.has_vision:
        if not model.has_vision:
            raise ConfigError(f"teacher {name} has no vision encoder; a student with vision needs a teacher with one")
        if student.config.image_processor != model.config.image_processor:
            raise ConfigError(
                f"teacher {name} preprocesses images differently from the student (image_processor sections differ); "
                "give the student the teacher's image_processor, as the batch's pixels are made once for both"
            )
        if student.config.image_token_id != model.config.image_token_id:
            raise ConfigError(f"teacher {name} and the student mark images with different token ids")
    return Teacher(model, _tokens_per_image(model) if student.has_vision else 0)


class DistillObjective(Objective):
    """`distill_loss` of the student against the frozen teacher on the batch's supervised positions."""

    def __init__(self, teacher: Teacher, temperature: float, alpha: float, student_tokens: int) -> None:
        super().__init__()
        self.teacher = teacher
        self.temperature, self.alpha = temperature, alpha
        self.student_tokens = student_tokens

    def teacher_logits(self, batch: Batch, image_token_id: int, targets: torch.Tensor) -> torch.Tensor:
        """The teacher's (N, V) logits at the student's N supervised positions; DataError if its supervised tokens
        are not the student's `targets`."""
        teacher = self.teacher
        seen = respan_images(batch, image_token_id, self.student_tokens, teacher.tokens_per_image)
        with torch.no_grad():
            logits, teacher_targets = teacher.model.supervised_logits(
                input_ids=seen["input_ids"],
                labels=seen["labels"],
                attention_mask=seen.get("attention_mask"),
                pixel_values=seen.get("pixel_values"),
            )
        if not torch.equal(teacher_targets, targets):
            raise DataError(
                f"the teacher's {teacher_targets.numel()} supervised positions do not line up with the student's "
                f"{targets.numel()}: teacher and student must share the tokenizer and the conversation template"
            )
        return logits

    def forward(self, model: VisionLanguageModel, batch: Batch) -> ObjectiveOutput:
        if "labels" not in batch:
            raise ConfigError("the distill objective reads conversations with labels (data_format: llava)")
        if "video_frames" in batch:
            raise ConfigError("the distill objective takes image and text records, not videos yet; use causal_lm")
        logits, targets = model.supervised_logits(
            input_ids=batch["input_ids"],
            labels=batch["labels"],
            attention_mask=batch.get("attention_mask"),
            pixel_values=batch.get("pixel_values"),
        )
        teacher = self.teacher_logits(batch, model.config.image_token_id, targets) if self.alpha else logits
        loss = distill_loss(logits, teacher, targets, self.temperature, self.alpha)
        return ObjectiveOutput(loss, int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0)


def build_distill(
    model: VisionLanguageModel, dataset: Dataset | None = None, stage: StageRecipe | None = None
) -> DistillObjective:
    """The distill objective of `stage` (its `distill:` options; defaults without a stage) for the student `model`,
    its teacher loaded now."""
    options = (stage.distill if stage is not None else None) or DistillOptions()
    options.validate("distill")
    teacher = load_teacher(options, model, dataset)
    return DistillObjective(teacher, options.temperature, options.alpha, _tokens_per_image(model))
