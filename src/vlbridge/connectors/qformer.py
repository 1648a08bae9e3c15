"""BLIP-2's Querying Transformer (`qformer`): learnable queries read the image by cross-attention.

Li et al., "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen Image Encoders and Large Language Models"
(2023). A BERT-style post-LN transformer whose inputs are `num_queries` learnable query embeddings, optionally followed
by text tokens. Queries and text share each layer's self-attention (who sees whom is the caller's mask); the queries
alone cross-attend to the (layer-normed) vision features, every `cross_attention_freq`-th layer starting at layer 0;
each stream has its own feed-forward. As the connector (BLIP-2 stage 2) only the queries run: their last-layer outputs
(post-LN, so layer-normed) go through a Linear to the LM width and are the soft prompt, `num_queries` tokens per image
whatever the number of patches.

The text side (word + position embeddings over the LM vocabulary, the [CLS]/[DEC] task tokens, each layer's text
feed-forward and the LM head tied to the word embeddings) serves only the stage-1 objectives, so it is a separate
module, `QFormerTextStream`, owned by the qformer objective (vlbridge.train.objectives.qformer) as BLIP-2 drops it in
stage 2: every parameter of the connector then takes part in the soft prompt. Parameter names follow HF's
`Blip2QFormerModel` (`layer.0.attention.attention.query`, `crossattention`, `intermediate_query`, `output_query`).

Options (`connector.options`): num_queries (32), hidden_size (the vision width, at most 768), num_layers (2),
num_heads (hidden_size // 64, or a smaller divisor for narrow widths), intermediate_size (4 x hidden_size),
cross_attention_freq (2), max_text_length (text positions of the text stream: the LM context, at most 512),
layer_norm_eps (1e-12, BERT's) and dropout (0.0; BLIP-2 uses 0.1). `connector.hidden_act` is the feed-forward
activation, `connector.bias` the bias of the final projection. Queries and embeddings start at normal(0, 0.02) as in
BERT; Linear layers keep PyTorch's default (std ~ 1 / sqrt(3 fan_in): about BERT's 0.02 at 768 wide, and large enough
that a narrow Q-Former trained from scratch passes signal between the streams from the first step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from vlbridge.config import ConnectorConfig
from vlbridge.connectors.base import CONNECTORS, Connector, ConnectorContext, at_least
from vlbridge.errors import ConfigError
from vlbridge.nn_utils import activation

CLS, DEC = 0, 1
"""Rows of `QFormerTextStream.task_tokens`: BLIP-2's [CLS] (ITC, ITM) and [DEC] (ITG) first text tokens."""


@dataclass(frozen=True)
class QFormerOptions:
    """`connector.options` of `qformer`; None: sized from the parts around it (see the module docstring)."""

    num_queries: int = 32
    hidden_size: int | None = None  # the vision width, at most 768
    num_layers: int = 2
    num_heads: int | None = None  # hidden_size // 64, or a smaller divisor for narrow widths
    intermediate_size: int | None = None  # 4 x hidden_size
    cross_attention_freq: int = 2
    max_text_length: int | None = None  # the LM context, at most 512
    layer_norm_eps: float = 1e-12
    dropout: float = 0.0

    def __post_init__(self) -> None:
        positive = ("num_queries", "hidden_size", "num_layers", "num_heads", "intermediate_size")
        at_least(self, 1, *positive, "cross_attention_freq", "max_text_length")
        if self.layer_norm_eps <= 0:
            raise ConfigError(f"connector.options.layer_norm_eps must be positive, got {self.layer_norm_eps!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"connector.options.dropout must be within [0, 1), got {self.dropout!r}")


@dataclass(frozen=True)
class QFormerSettings:
    """The Q-Former's resolved sizes: its options with every None sized from the parts around it."""

    num_queries: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    cross_attention_freq: int
    max_text_length: int
    layer_norm_eps: float
    dropout: float
    hidden_act: str


def _default_heads(hidden_size: int) -> int:
    """BERT's 64-wide heads when the width allows, else the most heads that leave each at least 8 wide."""
    if hidden_size % 64 == 0:
        return hidden_size // 64
    return next(h for h in (16, 12, 8, 4, 2, 1) if hidden_size % h == 0 and (hidden_size // h >= 8 or h == 1))


def qformer_settings(options: QFormerOptions, hidden_act: str, context: ConnectorContext) -> QFormerSettings:
    """Fill the options left None from the vision width and the LM's context; raises ConfigError if the heads do not
    divide the width."""
    hidden = min(context.vision_hidden_size, 768) if options.hidden_size is None else options.hidden_size
    heads = _default_heads(hidden) if options.num_heads is None else options.num_heads
    if hidden % heads:
        raise ConfigError(
            f"connector.options.hidden_size {hidden} is not divisible by num_heads {heads}; "
            "choose num_heads that divides it"
        )
    return QFormerSettings(
        num_queries=options.num_queries,
        hidden_size=hidden,
        num_layers=options.num_layers,
        num_heads=heads,
        intermediate_size=4 * hidden if options.intermediate_size is None else options.intermediate_size,
        cross_attention_freq=options.cross_attention_freq,
        max_text_length=(
            min(context.lm_config.max_position_embeddings, 512)
            if options.max_text_length is None
            else options.max_text_length
        ),
        layer_norm_eps=options.layer_norm_eps,
        dropout=options.dropout,
        hidden_act=hidden_act,
    )


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention; keys and values come from `context` (itself for self-attention)."""

    def __init__(self, s: QFormerSettings, context_size: int) -> None:
        super().__init__()
        self.num_heads, self.dropout = s.num_heads, s.dropout
        self.query = nn.Linear(s.hidden_size, s.hidden_size)
        self.key = nn.Linear(context_size, s.hidden_size)
        self.value = nn.Linear(context_size, s.hidden_size)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, L, H), context (B, S, Dc), mask bool (B, 1, L, S) True = attend, None = all -> (B, L, H)."""
        b, n, h = x.shape
        heads = self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, t.shape[1], heads, h // heads).transpose(1, 2)  # (B, heads, len, H / heads)

        q, k, v = split(self.query(x)), split(self.key(context)), split(self.value(context))
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)  # (B, heads, L, H / heads)
        return out.transpose(1, 2).reshape(b, n, h)  # (B, L, H)


class Output(nn.Module):
    """BERT's residual sublayer end: LayerNorm(residual + dropout(dense(x)))."""

    def __init__(self, s: QFormerSettings, in_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_size, s.hidden_size)
        self.LayerNorm = nn.LayerNorm(s.hidden_size, eps=s.layer_norm_eps)
        self.dropout = nn.Dropout(s.dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(x)))


class Attention(nn.Module):
    """Post-LN attention sublayer: LayerNorm(x + O(attention(x, context)))."""

    def __init__(self, s: QFormerSettings, context_size: int) -> None:
        super().__init__()
        self.attention = MultiHeadAttention(s, context_size)
        self.output = Output(s, s.hidden_size)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.attention(x, context, mask), x)


class Intermediate(nn.Module):
    """The feed-forward's widening half: act(dense(x))."""

    def __init__(self, s: QFormerSettings) -> None:
        super().__init__()
        self.dense = nn.Linear(s.hidden_size, s.intermediate_size)
        self.act = activation(s.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class FeedForward(nn.Module):
    """A text token's post-LN feed-forward sublayer (the queries have their own, in `QFormerLayer`)."""

    def __init__(self, s: QFormerSettings) -> None:
        super().__init__()
        self.intermediate = Intermediate(s)
        self.output = Output(s, s.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.intermediate(x), x)


class QFormerLayer(nn.Module):
    """Shared self-attention over [queries; text], cross-attention (queries only, when this layer has it), then a
    feed-forward per stream."""

    def __init__(self, s: QFormerSettings, vision_size: int, cross_attention: bool) -> None:
        super().__init__()
        self.attention = Attention(s, s.hidden_size)
        self.crossattention = Attention(s, vision_size) if cross_attention else None
        self.intermediate_query = Intermediate(s)
        self.output_query = Output(s, s.intermediate_size)

    def forward(
        self,
        x: torch.Tensor,
        vision: torch.Tensor,
        num_queries: int,
        mask: torch.Tensor | None,
        text_feed_forward: nn.Module | None,
    ) -> torch.Tensor:
        """x (B, Q + T, H) -> (B, Q + T, H); vision (B, P, Dv); mask bool (B, 1, Q + T, Q + T) or None."""
        x = self.attention(x, x, mask)
        queries = x[:, :num_queries]  # (B, Q, H)
        if self.crossattention is not None:
            queries = self.crossattention(queries, vision, None)
        queries = self.output_query(self.intermediate_query(queries), queries)
        if x.shape[1] == num_queries:
            return queries
        assert text_feed_forward is not None, "text tokens need the text stream's feed-forward"
        return torch.cat([queries, text_feed_forward(x[:, num_queries:])], dim=1)  # (B, Q + T, H)


@CONNECTORS.register("qformer")
class QFormerConnector(Connector):
    """`num_queries` learnable queries -> Q-Former layers over the vision features -> Linear to the LM width."""

    Options = QFormerOptions
    options: QFormerOptions

    def __init__(self, config: ConnectorConfig, context: ConnectorContext) -> None:
        super().__init__(config, context)
        s = self.settings = qformer_settings(self.options, config.hidden_act, context)
        self.vision_layernorm = nn.LayerNorm(context.vision_hidden_size, eps=s.layer_norm_eps)  # BLIP-2's ln_vision
        self.query_tokens = nn.Parameter(torch.zeros(1, s.num_queries, s.hidden_size))
        self.layernorm = nn.LayerNorm(s.hidden_size, eps=s.layer_norm_eps)
        self.dropout = nn.Dropout(s.dropout)
        self.layer = nn.ModuleList(
            QFormerLayer(s, context.vision_hidden_size, i % s.cross_attention_freq == 0) for i in range(s.num_layers)
        )
        self.language_projection = nn.Linear(s.hidden_size, context.lm_config.hidden_size, bias=config.bias)
        nn.init.normal_(self.query_tokens, std=0.02)

    def num_tokens(self, n_patches: int) -> int:
        return self.settings.num_queries

    def encode(
        self,
        features: torch.Tensor,
        text_embeds: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        text_stream: QFormerTextStream | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Q-Former outputs (query (N, Q, H), text (N, T, H) or None) for features (N, P, Dv) and optional text
        embeddings (N, T, H) from `text_stream.embed`; `mask` bool (N, 1, Q + T, Q + T) says who sees whom."""
        if (text_embeds is None) != (text_stream is None):
            raise ValueError("text_embeds and text_stream go together: pass both or neither")
        n, q = features.shape[0], self.settings.num_queries
        vision = self.vision_layernorm(features)
        x = self.query_tokens.expand(n, -1, -1).to(vision.dtype)  # (N, Q, H)
        if text_embeds is not None:
            x = torch.cat([x, text_embeds.to(x.dtype)], dim=1)  # (N, Q + T, H)
        x = self.dropout(self.layernorm(x))
        for i, layer in enumerate(self.layer):
            x = layer(x, vision, q, mask, None if text_stream is None else text_stream.layer[i])
        return x[:, :q], (None if text_embeds is None else x[:, q:])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        queries, _ = self.encode(features)
        return self.language_projection(queries)  # (N, Q, D)

    def new_text_stream(self, vocab_size: int) -> QFormerTextStream:
        """A freshly initialised text stream sized for this Q-Former and a `vocab_size`-token vocabulary."""
        return QFormerTextStream(self.settings, vocab_size)


class QFormerTextStream(nn.Module):
    """The Q-Former's text side for stage 1: embeddings, task tokens, per-layer text feed-forwards and an LM head
    (BERT's prediction head, its decoder tied to the word embeddings)."""

    def __init__(self, s: QFormerSettings, vocab_size: int) -> None:
        super().__init__()
        self.max_length = s.max_text_length
        self.word_embeddings = nn.Embedding(vocab_size, s.hidden_size)
        self.position_embeddings = nn.Embedding(s.max_text_length, s.hidden_size)
        self.task_tokens = nn.Parameter(torch.zeros(2, s.hidden_size))  # rows CLS, DEC
        self.layer = nn.ModuleList(FeedForward(s) for _ in range(s.num_layers))
        self.transform = nn.Sequential(
            nn.Linear(s.hidden_size, s.hidden_size),
            activation(s.hidden_act),
            nn.LayerNorm(s.hidden_size, eps=s.layer_norm_eps),
        )
        self.lm_bias = nn.Parameter(torch.zeros(vocab_size))
        for embedding in (self.word_embeddings.weight, self.position_embeddings.weight, self.task_tokens):
            nn.init.normal_(embedding, std=0.02)

    def embed(self, input_ids: torch.Tensor, task: int) -> torch.Tensor:
        """(B, T) ids -> (B, 1 + T, H): the task token (CLS or DEC) then the tokens, plus position embeddings."""
        b, t = input_ids.shape
        if t + 1 > self.max_length:
            raise ConfigError(
                f"a caption of {t} tokens (+1 task token) exceeds the Q-Former's {self.max_length} text positions; "
                "lower the stage's max_length or raise connector.options.max_text_length"
            )
        words = self.word_embeddings(input_ids)  # (B, T, H)
        first = self.task_tokens[task].to(words.dtype).expand(b, 1, -1)  # (B, 1, H)
        positions = self.position_embeddings(torch.arange(t + 1, device=input_ids.device))  # (1 + T, H)
        return torch.cat([first, words], dim=1) + positions

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, V) from text outputs (B, T, H)."""
        return F.linear(self.transform(hidden), self.word_embeddings.weight, self.lm_bias)
