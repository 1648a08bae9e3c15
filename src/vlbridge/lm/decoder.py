"""The Llama-family decoder-only language model (Llama, Vicuna, Mistral, Qwen2, SmolLM).

Touvron et al., "LLaMA" (2023): pre-norm transformer with RMSNorm (Zhang & Sennrich 2019), rotary position embedding
(Su et al. 2021), grouped-query attention (Ainslie et al., "GQA", 2023) and a SwiGLU MLP (Shazeer 2020); Qwen2 adds
q/k/v biases. Module and parameter names are HF's (`model.layers.0.self_attn.q_proj.weight`, ...), so the
state_dict of `DecoderLM` equals that of `LlamaForCausalLM` / `Qwen2ForCausalLM` key for key.

The generation contract (`new_cache`, `prefill`, `decode_step`) lives here too; the Generator drives it. The decode
hot path takes no Python loop over the batch, builds a mask only when the batch has padding, and reads the
preallocated KV cache through views. Which kernel runs each product and each attention is cpu_kernels.py's choice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vlbridge.config import LMConfig
from vlbridge.errors import ConfigError, ContextOverflowError
from vlbridge.lm.cpu_kernels import Linear, attention
from vlbridge.lm.fused_decode import fused_decode_stack
from vlbridge.lm.int8 import Int8Embedding, Int8Linear
from vlbridge.lm.kv_cache import KVCache
from vlbridge.lm.rope import RotaryEmbedding, apply_rotary
from vlbridge.nn_utils import activation


class RMSNorm(nn.Module):
    """x / rms(x) * weight, normalised in float32 and cast back before the weight (as HF's LlamaRMSNorm)."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), self.weight.shape, eps=self.eps).to(x.dtype)


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE; q/k/v biases when `attention_bias` (Qwen2), never on o_proj."""

    def __init__(self, config: LMConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.resolved_head_dim
        d, hd, bias = config.hidden_size, self.head_dim, config.attention_bias
        self.q_proj = Linear(d, self.num_heads * hd, bias=bias)
        self.k_proj = Linear(d, self.num_kv_heads * hd, bias=bias)
        self.v_proj = Linear(d, self.num_kv_heads * hd, bias=bias)
        self.o_proj = Linear(self.num_heads * hd, d, bias=False)

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor], attn_mask: Tensor | None, kv_cache: KVCache | None = None
    ) -> Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, H_kv, T, hd)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, H_kv, T, hd)
        cos, sin = rope
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, H_kv, S, hd)
        out = attention(q, k, v, attn_mask)  # (B, H, T, hd); DecoderLM passes a mask whenever a cache prefix exists
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU: down(act(gate(x)) * up(x))."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.gate_proj = Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = activation(config.hidden_act)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(x)). Names as HF's LlamaDecoderLayer."""

    def __init__(self, config: LMConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor], attn_mask: Tensor | None, kv_cache: KVCache | None = None
    ) -> Tensor:
        """x (B, T, D); rope (cos, sin) (B, T, hd); attn_mask bool (B, 1, T, S) True = attend, None = causal."""
        x = x + self.self_attn(self.input_layernorm(x), rope, attn_mask, kv_cache)
        return x + self.mlp(self.post_attention_layernorm(x))


def causal_mask(t: int, s: int, device: torch.device) -> Tensor:
    """Bool (t, s): query i (at absolute position s - t + i) sees keys 0 .. s - t + i."""
    return torch.ones(t, s, dtype=torch.bool, device=device).tril(diagonal=s - t)


def padding_mask(attention_mask: Tensor, t: int) -> Tensor:
    """Bool (B, 1, t, S) from a (B, S) 1/0 mask: causal, padded keys hidden, and each query always sees itself.

    The diagonal keeps padding queries from a fully masked row (whose softmax would be NaN and leak into later
    layers through their keys/values); their outputs are never used.
    """
    s = attention_mask.shape[1]
    if t == 1:
        return attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
    causal = causal_mask(t, s, attention_mask.device)  # (t, S)
    diagonal = torch.ones(t, s, dtype=torch.bool, device=attention_mask.device).tril(s - t).triu(s - t)
    return (causal & attention_mask.bool()[:, None, None, :]) | diagonal  # (B, 1, t, S)


def right_padded(attention_mask: Tensor) -> bool:
    """Whether every row of a (B, S) 1/0 mask is real tokens then padding only. Then plain causal attention and
    positions 0..S-1 are exact for every real token (padding sits after it), so no mask is built: training batches
    are right-padded.
    On the default recipe's length-grouped instruct batches: 1.04x steps per second
    (experiments/causal_training_mask.py)."""
    return bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())


class DecoderModel(nn.Module):
    """The transformer body (HF's LlamaModel): embed_tokens, layers, norm."""

    def __init__(self, config: LMConfig, block_cls: type[nn.Module]) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(block_cls(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class DecoderLM(nn.Module):
    """A Llama-family causal LM whose state_dict keys equal HF's `*ForCausalLM` keys."""

    block_cls: type[nn.Module] = DecoderLayer

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        if config.num_attention_heads % config.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({config.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({config.num_key_value_heads})"
            )
        if config.resolved_head_dim % 2:
            raise ConfigError(f"head_dim must be even for rotary embedding, got {config.resolved_head_dim}")
        self.config = config
        self.model = DecoderModel(config, self.block_cls)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.rotary = RotaryEmbedding(
            config.resolved_head_dim, config.rope_theta, min(config.max_position_embeddings, 4096)
        )
        self.apply(partial(init_weights, std=config.initializer_range))
        self.tie_weights()

    def tie_weights(self) -> None:
        """With tie_word_embeddings, make the LM head the embedding matrix itself (again, after a load replaced it); an
        int8 head (`lm/int8.py`) holds the quantised matrix, and the embeddings become a lookup into it."""
        if not self.config.tie_word_embeddings:
            return
        if isinstance(self.lm_head, Int8Linear):
            self.model.embed_tokens = Int8Embedding.tied_to(self.lm_head)
        elif isinstance(self.lm_head, nn.Linear):
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def hidden_size(self) -> int:
        """Width of the residual stream (and of the input embeddings)."""
        return self.config.hidden_size

    def embed(self, input_ids: Tensor) -> Tensor:
        """Token embeddings (B, T) -> (B, T, D) in the model's float dtype (int8 rows come in their scales' dtype)."""
        return self.model.embed_tokens(input_ids).to(self.model.norm.weight.dtype)

    def forward(
        self,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
        hooks: Mapping[int, Callable[[Tensor], Tensor]] | None = None,
        logits_to_keep: int = 0,
        return_hidden: bool = False,
    ) -> Tensor:
        """Logits (B, T_kept, V) in float32, or the final normed hidden states (B, T_kept, D) if `return_hidden`.

        attention_mask (B, T_past + T): 1 = real token, 0 = padding. position_ids default to cumsum(mask) - 1
        (padding clamped to 0), else to T_past + arange(T). hooks[i] transforms the residual stream before layer i.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise TypeError("pass exactly one of input_ids or inputs_embeds")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, D)
        past = 0 if kv_cache is None else kv_cache.length
        rope, mask = self._rope_and_mask(x, past, attention_mask, position_ids)
        fused = None
        if not hooks and all(type(layer) is DecoderLayer for layer in self.model.layers):
            fused = fused_decode_stack(self.model.layers, x, rope, mask, kv_cache)  # decode on x86 CPUs with AVX2
        if fused is not None:
            x = fused
        else:
            for i, layer in enumerate(self.model.layers):
                if hooks and i in hooks:
                    x = hooks[i](x)
                x = layer(x, rope, mask, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(x.shape[1])
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        x = self.model.norm(x)
        return x if return_hidden else self.head(x)

    def head(self, hidden: Tensor) -> Tensor:
        """Float32 logits (..., V) of final normed hidden states (..., D): training applies it to the supervised
        positions only."""
        return self.lm_head(hidden).float()

    def _rope_and_mask(
        self, x: Tensor, past: int, attention_mask: Tensor | None, position_ids: Tensor | None
    ) -> tuple[tuple[Tensor, Tensor], Tensor | None]:
        """RoPE (cos, sin) for the new tokens and the attention mask (None when plain causal attention is exact)."""
        b, t = x.shape[:2]
        padded = False
        if attention_mask is not None:
            if attention_mask.shape != (b, past + t):
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(b, past + t)} "
                    f"(batch, cached {past} + new {t} tokens)"
                )
            # padding only after each row's real tokens (training batches) changes nothing for them: no mask needed
            padded = not bool(attention_mask.all()) and (past > 0 or not right_padded(attention_mask))
        if position_ids is None and not padded:
            rope = self.rotary.span(past, t, x.dtype, x.device)  # positions past .. past + t - 1
        elif position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1)[:, past:] - 1).clamp_min(0)  # (B, T)
            rope = self.rotary(position_ids, x.dtype, past + t - 1)  # cumsum(mask) - 1 never exceeds the index
        else:
            rope = self.rotary(position_ids, x.dtype)
        if padded:
            return rope, padding_mask(attention_mask, t)
        if past and t > 1:
            return rope, causal_mask(t, past + t, x.device)
        return rope, None

    def new_cache(self, batch_size: int, max_length: int, dtype: torch.dtype | None = None) -> KVCache:
        """A KV cache for `batch_size` rows of up to `max_length` tokens, on this model's device."""
        limit = self.config.max_position_embeddings
        if max_length > limit:
            raise ContextOverflowError(
                f"{max_length} tokens (prompt plus new tokens) exceed the language model's context window of "
                f"{limit}; shorten the prompt or lower max_new_tokens by {max_length - limit}"
            )
        cfg, norm = self.config, self.model.norm.weight  # a float weight in the compute dtype (embeddings may be int8)
        kv_shape = (cfg.num_key_value_heads, cfg.resolved_head_dim)
        return KVCache(cfg.num_hidden_layers, batch_size, max_length, *kv_shape, dtype or norm.dtype, norm.device)

    def prefill(self, cache: KVCache, attention_mask: Tensor, **inputs: object) -> Tensor:
        """Run the prompt (input_ids or inputs_embeds, optional hooks/position_ids) into `cache`; last logits (B, V)."""
        return self(attention_mask=attention_mask, kv_cache=cache, logits_to_keep=1, **inputs)[:, -1]

    def decode_step(
        self,
        cache: KVCache,
        token_ids: Tensor,
        attention_mask: Tensor,
        hooks: Mapping[int, Callable[[Tensor], Tensor]] | None = None,
    ) -> Tensor:
        """One token per row (B, 1) after `cache.length` cached ones; mask (B, cache.length + 1); logits (B, V).

        hooks are those given to prefill when they must act on every token (gated cross-attention).
        """
        logits = self(input_ids=token_ids, attention_mask=attention_mask, kv_cache=cache, hooks=hooks, logits_to_keep=1)
        return logits[:, -1]


def init_weights(module: nn.Module, std: float) -> None:
    """Llama initialisation: normal(0, std) for linear and embedding weights, zero biases (norms start at 1).

    HF's 0.02 suits wide models (about 1.3 / sqrt(4096)). A narrow model trained from scratch wants about
    1 / sqrt(hidden_size): at 0.02 and width 256 its attention logits start near zero, every head attends
    uniformly, and a lookup whose answer comes a few tokens after its key is not learned in our budget
    (`experiments/binding_gap.py --init-std`).
    """
    if isinstance(module, (nn.Linear, nn.Embedding)) and module.weight.is_meta:
        return  # built to be loaded (model/io.py): nothing to fill, and meta normal_ costs ~2 ms a tensor in Python
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
