"""BLIP-2 stage 1: the Q-Former learns to read images against captions with ITC + ITM + ITG (objective `qformer`).

Li et al., "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen Image Encoders and Large Language Models"
(2023), section 3.2. The vision encoder stays frozen (the stage's plan decides; the objective only reads its
features); the Q-Former (the `qformer` connector) and this objective's own parts train. One shared Q-Former, three
attention masks over [queries; text]:

- ITC, image-text contrastive, uni-modal mask (queries and text do not see each other): each query output and the
  text's [CLS] output are projected and L2-normalised; an image-text similarity is the maximum over the queries; a
  symmetric cross-entropy over the batch with a learnable temperature (clamped to [0.001, 0.5]).
- ITM, image-text matching, bidirectional mask: binary matched / unmatched classification of the mean query output.
  For every caption one hard negative image, and for every image one hard negative caption, are drawn with
  probability softmax(ITC similarity) over the batch's other pairs (never the positive).
- ITG, image-grounded generation, multimodal causal mask: a [DEC] token then the caption; text tokens see all queries
  and the earlier text, queries see no text; next-token loss through the text stream's LM head.

Batches are image-caption pairs as `ImageTextDataset` + `collate_image_text` make them: pixel_values (B, 3, H, W),
input_ids and attention_mask (B, T), right-padded. The objective's parts are `qformer_text` (the Q-Former's text
stream: word and position embeddings over the LM vocabulary, task tokens, text feed-forwards, LM head) and
`qformer_heads` (the ITC projections, the temperature and the ITM head); like BLIP-2 they are not part of the VLM and
are dropped after the stage. ITC and ITG use label smoothing 0.1, as BLIP-2 does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from vlbridge.connectors.qformer import CLS, DEC, QFormerConnector
from vlbridge.errors import ConfigError, DataError
from vlbridge.lm.loss import IGNORE_INDEX
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.train.objectives.base import Batch, Objective, ObjectiveOutput

MODES = ("unimodal", "bidirectional", "causal")


def qformer_mask(num_queries: int, text_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Who sees whom in [queries; text]: bool (B, 1, Q + T, Q + T), True = may attend, for text_mask (B, T) (1 = real
    token). `unimodal` (ITC): each stream sees only itself; `bidirectional` (ITM): everything; `causal` (ITG): queries
    see queries, text sees all queries and text up to itself. Padded keys are hidden; every position sees itself."""
    if mode not in MODES:
        raise ValueError(f"unknown Q-Former mask mode {mode!r}; choose one of {', '.join(MODES)}")
    b, t = text_mask.shape
    n = num_queries + t
    is_text = torch.arange(n, device=text_mask.device) >= num_queries  # (L,)
    if mode == "bidirectional":
        allowed = torch.ones(n, n, dtype=torch.bool, device=text_mask.device)
    elif mode == "unimodal":
        allowed = is_text[:, None] == is_text[None, :]  # (L, L)
    else:
        causal = torch.ones(n, n, dtype=torch.bool, device=text_mask.device).tril()
        allowed = ~is_text[None, :] | (is_text[:, None] & causal)  # (L, L): query keys for all, text keys causally
    keys = torch.cat([text_mask.new_ones(b, num_queries), text_mask], dim=1).bool()  # (B, L)
    mask = allowed[None] & keys[:, None, :]  # (B, L, L)
    mask |= torch.eye(n, dtype=torch.bool, device=text_mask.device)
    return mask[:, None]  # (B, 1, L, L)


def sample_negatives(similarity: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """For each row i of a (B, B) similarity matrix, a column j != i drawn with probability softmax over the row's
    off-diagonal entries (BLIP-2's hard negative mining); (B,) long."""
    b = similarity.shape[0]
    assert b >= 2 and similarity.shape == (b, b), "hard negatives need a square similarity matrix of at least 2"
    eye = torch.eye(b, dtype=torch.bool, device=similarity.device)
    probs = similarity.detach().float().masked_fill(eye, float("-inf")).softmax(dim=-1)  # (B, B), diagonal 0
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


class QFormerHeads(nn.Module):
    """ITC projections into a shared `embed_size` space, the learnable temperature and the ITM classifier."""

    def __init__(self, hidden_size: int, embed_size: int, init_temperature: float) -> None:
        super().__init__()
        self.vision_projection = nn.Linear(hidden_size, embed_size)
        self.text_projection = nn.Linear(hidden_size, embed_size)
        self.temp = nn.Parameter(torch.tensor([init_temperature]))  # 1-D: FSDP shards it
        self.itm_head = nn.Linear(hidden_size, 2)


class QFormerObjective(Objective):
    """BLIP-2's stage-1 loss: `weights` (ITC, ITM, ITG) x the three losses, summed."""

    min_temperature, max_temperature = 0.001, 0.5

    def __init__(
        self,
        connector: QFormerConnector,
        vocab_size: int,
        embed_size: int = 256,
        weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
        init_temperature: float = 0.07,
        label_smoothing: float = 0.1,
    ) -> None:
        super().__init__()
        self.text = connector.new_text_stream(vocab_size)
        self.heads = QFormerHeads(connector.settings.hidden_size, embed_size, init_temperature)
        self.weights = dict(zip(("itc", "itm", "itg"), weights, strict=True))
        self.label_smoothing = label_smoothing

    def parts(self) -> dict[str, nn.Module]:
        return {"qformer_text": self.text, "qformer_heads": self.heads}

    @property
    def temperature(self) -> torch.Tensor:
        """The ITC softmax temperature in use, (1,)."""
        return self.heads.temp.clamp(self.min_temperature, self.max_temperature)

    def itc_features(
        self, connector: QFormerConnector, features: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm (per-query image features (B, Q, E), [CLS] text features (B, E)) from one uni-modal pass."""
        text_mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)  # (B, 1 + T): [CLS] + caption
        attend = qformer_mask(connector.settings.num_queries, text_mask, "unimodal")
        queries, text = connector.encode(features, self.text.embed(ids, CLS), attend, self.text)
        assert text is not None
        image = F.normalize(self.heads.vision_projection(queries), dim=-1)  # (B, Q, E)
        return image, F.normalize(self.heads.text_projection(text[:, 0]), dim=-1)  # (B, E)

    def itc_logits(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B_images, B_texts): the best-matching query's similarity to each caption, over the temperature."""
        similarity = torch.einsum("iqe,je->ijq", image.float(), text.float()).amax(dim=-1)  # (B, B)
        return similarity / self.temperature.float()

    def itm_logits(
        self, connector: QFormerConnector, features: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Matched / unmatched logits (B, 2) of image i with caption i, queries and text seeing each other."""
        text_mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)  # (B, 1 + T)
        attend = qformer_mask(connector.settings.num_queries, text_mask, "bidirectional")
        queries, _ = connector.encode(features, self.text.embed(ids, CLS), attend, self.text)
        return self.heads.itm_head(queries.mean(dim=1))  # (B, 2)

    def itg_logits(
        self, connector: QFormerConnector, features: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Logits (B, T, V) whose position t predicts ids[:, t], from [DEC] + ids[:, :t] and all the queries."""
        text_mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask[:, :-1]], dim=1)  # (B, T): [DEC] + ids[:-1]
        attend = qformer_mask(connector.settings.num_queries, text_mask, "causal")
        _, text = connector.encode(features, self.text.embed(ids[:, :-1], DEC), attend, self.text)
        assert text is not None
        return self.text.logits(text)

    def losses(self, model: VisionLanguageModel, batch: Batch) -> dict[str, torch.Tensor]:
        """The three unweighted losses of a batch: {"itc", "itm", "itg"}."""
        connector, features, ids, mask = self._inputs(model, batch)
        image, text = self.itc_features(connector, features, ids, mask)
        logits = self.itc_logits(image, text)  # (B, B)
        target = torch.arange(logits.shape[0], device=logits.device)
        smooth = self.label_smoothing
        itc = (
            F.cross_entropy(logits, target, label_smoothing=smooth)
            + F.cross_entropy(logits.t(), target, label_smoothing=smooth)
        ) / 2
        with torch.no_grad():
            negative_images = sample_negatives(logits.t())  # (B,): for caption j, an image != j
            negative_texts = sample_negatives(logits)  # (B,): for image i, a caption != i
        pair_features = torch.cat([features, features[negative_images], features])  # (3B, P, Dv)
        pair_ids = torch.cat([ids, ids, ids[negative_texts]])  # (3B, T)
        pair_mask = torch.cat([mask, mask, mask[negative_texts]])  # (3B, T)
        matched = torch.cat([torch.ones_like(target), torch.zeros_like(target), torch.zeros_like(target)])  # (3B,)
        itm = F.cross_entropy(self.itm_logits(connector, pair_features, pair_ids, pair_mask).float(), matched)
        generated = self.itg_logits(connector, features, ids, mask).float()  # (B, T, V)
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)  # (B, T)
        itg = F.cross_entropy(
            generated.reshape(-1, generated.shape[-1]),
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            label_smoothing=smooth,
        )
        return {"itc": itc, "itm": itm, "itg": itg}

    def forward(self, model: VisionLanguageModel, batch: Batch) -> ObjectiveOutput:
        losses = self.losses(model, batch)
        loss = sum(self.weights[name] * value for name, value in losses.items())
        mask = batch.get("attention_mask")
        return ObjectiveOutput(loss, int(mask.sum()) if mask is not None else batch["input_ids"].numel())

    def _inputs(
        self, model: VisionLanguageModel, batch: Batch
    ) -> tuple[QFormerConnector, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(connector, frozen-encoder features (B, P, Dv), caption ids (B, T), mask (B, T)), checked."""
        connector = _qformer_of(model)
        assert model.vision_encoder is not None
        if "labels" in batch or "pixel_values" not in batch:
            raise ConfigError(
                "the qformer objective reads image-caption pairs (pixel_values, input_ids, attention_mask as "
                "ImageTextDataset + collate_image_text make them), not conversation batches; build the stage's data "
                "as for the contrastive objective"
            )
        ids = batch["input_ids"]
        mask = batch.get("attention_mask", torch.ones_like(ids))
        if ids.shape[0] < 2:
            raise ConfigError(
                "the qformer objective needs at least 2 image-caption pairs per batch (ITC and ITM contrast each pair "
                "with the others); raise the stage's batch_size"
            )
        if bool((mask[:, 1:] > mask[:, :-1]).any()):
            raise DataError("the qformer objective expects right-padded captions (collate_image_text's default)")
        pixels = batch["pixel_values"].to(connector.query_tokens.dtype)
        return connector, model.vision_encoder(pixels), ids, mask


def _qformer_of(model: VisionLanguageModel) -> QFormerConnector:
    """The model's Q-Former connector; any other model raises ConfigError."""
    if model.vision_encoder is None or not isinstance(model.connector, QFormerConnector):
        raise ConfigError(
            "the qformer objective trains a Q-Former: build the model with vision and `connector: {name: qformer}`"
        )
    return model.connector


def build_qformer_objective(model: VisionLanguageModel, dataset: Dataset | None = None) -> QFormerObjective:
    """The qformer objective sized for `model` (its Q-Former and its LM vocabulary)."""
    return QFormerObjective(_qformer_of(model), model.config.language_model.vocab_size)
