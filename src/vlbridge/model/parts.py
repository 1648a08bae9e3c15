"""A vision-language model assembled from parts with their own checkpoints, as LLaVA's recipe starts: a pretrained
CLIP/SigLIP vision tower, a pretrained Llama-family LLM and a new connector between them.

The tower comes from a standalone HF `CLIPVisionModel` / `SiglipVisionModel` directory, or the vision half of a
`CLIPModel` / `SiglipModel` one (the text half is skipped unread), with its image processor from the directory's
`preprocessor_config.json`; or from a whole vision-language checkpoint (vlbridge's own, as the embedded default, or
an HF llava one): its vision encoder and image processor, with its own vision settings (feature layer, strategy),
its connector and LM skipped unread. The LM comes from an HF Llama / Mistral / Qwen2 directory (or a text-only vlbridge
checkpoint), with its tokenizer and chat template. When the tokenizer lacks the `<image>` placeholder it is added and
the embedding table (and an untied LM head) grows by the new rows, each the mean of the existing rows, as LLaVA and
transformers' `resize_token_embeddings(mean_resizing=True)` do; every pre-existing weight is kept bit for bit.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlbridge.config import ConnectorConfig, ImageProcessorConfig, ModelConfig, VisionConfig
from vlbridge.errors import CheckpointError, ConfigError
from vlbridge.files import open_safetensors, read_json_object
from vlbridge.lm.hf_keys import lm_state_from_hf
from vlbridge.lm.tokenizer import Tokenizer
from vlbridge.model import io
from vlbridge.model.hf_llava import image_processor_dict_from_dir
from vlbridge.model.processor import processor_for
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.model.weights import tower_index, whole_model_tower
from vlbridge.vision.hf_keys import image_processor_config_from_hf, vision_config_from_hf

LM_PREFIX = "language_model."
GROWN_KEYS = ("model.embed_tokens.weight", "lm_head.weight")


def read_tower_config(path: str | Path) -> tuple[VisionConfig, ImageProcessorConfig]:
    """The vision config and image processor of a CLIP/SigLIP tower directory (config.json, preprocessor_config.json;
    the image processor falls back to the family's HF defaults when the directory has none), or those of a whole
    vision-language checkpoint (`whole_model_tower`)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"vision tower {path} has no config.json; pass an HF CLIPVisionModel, CLIPModel, SiglipVisionModel or "
            "SiglipModel directory (what transformers' save_pretrained writes), or a vision-language checkpoint"
        )
    whole = whole_model_tower(path)
    if whole is not None:
        assert whole[0].vision is not None, "whole_model_tower refuses text-only checkpoints"
        return whole[0].vision, whole[0].image_processor
    vision = vision_config_from_hf(read_json_object(path / "config.json"))
    preprocessor = image_processor_dict_from_dir(path)
    if preprocessor is None:
        kind = "CLIPImageProcessor" if vision.family == "clip" else "SiglipImageProcessor"
        preprocessor = {"image_processor_type": kind}
    return vision, image_processor_config_from_hf(preprocessor)


def _read_tensors(path: Path, rules: tuple[tuple[str, str], ...] | None, keep: Any = None) -> dict[str, Tensor]:
    """Every tensor of the checkpoint at `path` whose (renamed) name passes `keep` (default: all), by our name."""
    by_file: dict[Path, list[tuple[str, str]]] = {}
    for name, (file, key) in io.index_weights(path, rules).items():
        if keep is None or keep(name):
            by_file.setdefault(file, []).append((name, key))
    out = {}
    for file, names in by_file.items():
        with open_safetensors(file) as handle:
            for name, key in names:
                out[name] = handle.get_tensor(key)
    return out


def tower_state(path: str | Path) -> dict[str, Tensor]:
    """The ViT's weights (our names) from a tower directory (`weights.tower_index` says which tensors those are)."""
    out = {}
    for name, (file, key) in tower_index(Path(path)).items():
        with open_safetensors(file) as handle:
            out[name] = handle.get_tensor(key)
    return out


def add_image_token(tokenizer: Tokenizer, token: str) -> int:
    """The id of `token`, added to `tokenizer` as a special token first when it lacks it."""
    if tokenizer.token_to_id(token) is None:
        tokenizer.add_special_tokens([token])
    token_id = tokenizer.token_to_id(token)
    assert token_id is not None, "a token just added has an id"
    return token_id


def grow_vocab(state: dict[str, Tensor], vocab_size: int) -> dict[str, Tensor]:
    """`state` (HF causal-LM names) with the embedding table and LM head grown to `vocab_size` rows; each new row is
    the mean of the existing rows (a tied head is the same tensor grown once). Other tensors are passed through."""
    out = dict(state)
    grown: dict[int, Tensor] = {}
    for key in GROWN_KEYS:
        table = state.get(key)
        if table is None or table.shape[0] >= vocab_size:
            continue
        if id(table) not in grown:
            mean = table.float().mean(dim=0, keepdim=True).to(table.dtype)  # (1, D)
            grown[id(table)] = torch.cat([table, mean.expand(vocab_size - table.shape[0], -1)])  # (V', D)
        out[key] = grown[id(table)]
    return out


def lm_start_config(lm_path: str | Path) -> tuple[ModelConfig, tuple[tuple[str, str], ...] | None]:
    """The config (text-only) and key rules of an LM directory; a directory holding a vision model is refused."""
    config, rules = io.read_config(Path(lm_path))
    if config.vision is not None:
        raise ConfigError(
            f"{lm_path} is a whole vision-language model; the language model part must be a text LLM directory "
            "(HF Llama / Mistral / Qwen2, or a text-only vlbridge checkpoint)"
        )
    return config, rules


def with_parts(
    base: ModelConfig,
    tokenizer: Tokenizer,
    parts: ModelConfig,
    tower: tuple[VisionConfig, ImageProcessorConfig] | None,
    template: str | None = None,
) -> ModelConfig:
    """`base` (a text LLM's config) with vision added: the vision and image-processor sections from `tower` when
    given (keeping `parts.vision`'s feature_layer and select_strategy if it has a vision section), else `parts`';
    `parts`' connector; the vocabulary grown to cover the tokenizer, which must hold `parts.image_token`."""
    image_id = tokenizer.token_to_id(parts.image_token)
    if image_id is None:
        raise ConfigError(f"the tokenizer has no {parts.image_token!r} token; add it first (add_image_token)")
    vision, image_processor = parts.vision, parts.image_processor
    if tower is not None:
        vision, image_processor = tower
        if parts.vision is not None:
            chosen = parts.vision
            vision = replace(vision, feature_layer=chosen.feature_layer, select_strategy=chosen.select_strategy)
    vocab = max(base.language_model.vocab_size, tokenizer.vocab_size)
    return replace(
        base,
        language_model=replace(base.language_model, vocab_size=vocab),
        vision=vision,
        connector=parts.connector,
        image_processor=image_processor,
        image_token=parts.image_token,
        image_token_id=image_id,
        template=base.template or template,
    )


def load_parts(
    model: VisionLanguageModel,
    lm_path: str | Path,
    rules: tuple[tuple[str, str], ...] | None,
    tower_path: str | Path | None = None,
    stored: bool = False,
) -> None:
    """Load the LM weights from `lm_path` (vocabulary grown to the model's, new rows the mean) and, when given, the
    vision tower's from `tower_path` into `model` (built on the meta device: `io.build_empty`), strictly, each in its
    parameter's dtype (with `stored`, a floating-point parameter keeps the dtype its file stores it in); then
    initialise the parts no file holds, and only those: the connector (and the vision encoder when no tower is
    given). A missing, unexpected or wrongly shaped weight raises CheckpointError naming the directory."""
    lm_path = Path(lm_path)
    state = _read_tensors(lm_path, rules, lambda n: n.startswith(LM_PREFIX))
    hf_state = {name.removeprefix(LM_PREFIX): tensor for name, tensor in state.items()}
    lm_config = model.config.language_model
    hf_state = grow_vocab(lm_state_from_hf(hf_state, lm_config), lm_config.vocab_size)
    _strict_load(model.language_model, hf_state, lm_path, stored)
    if tower_path is not None:
        if model.vision_encoder is None:
            raise ConfigError("a vision tower was given for a model built without vision; build it with vision=True")
        _strict_load(model.vision_encoder, tower_state(tower_path), Path(tower_path), stored)
    model.language_model.tie_weights()
    if model.config.vision is not None:  # after the LM: parts built from it (LLaVA-Mini pre-fusion) see its weights
        model.build_vision(encoder=tower_path is None)


def _strict_load(module: torch.nn.Module, state: dict[str, Tensor], path: Path, stored: bool = False) -> None:
    """`module.load_state_dict(state, strict=True)`, each tensor put in place of the (meta) parameter in
    that parameter's dtype (with `stored`, a floating-point parameter keeps the file's), with torch's error as a
    CheckpointError naming `path`."""
    dtypes = {name: tensor.dtype for name, tensor in module.state_dict().items()}
    if stored:
        params = {name for name, _ in module.named_parameters()}
        dtypes = {k: v for k, v in dtypes.items() if not (k in params and k in state and state[k].is_floating_point())}
    state = {name: tensor.to(dtypes.get(name, tensor.dtype)) for name, tensor in state.items()}
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        reason = " ".join(str(err).split())  # torch's message spans lines
        raise CheckpointError(f"the weights in {path} do not fit the model its config describes: {reason}") from err


def from_parts(
    language_model: str | Path,
    vision_encoder: str | Path,
    connector: ConnectorConfig | None = None,
    image_token: str = "<image>",
    feature_layer: int | list[int] | None = None,
    select_strategy: str | None = None,
    template: str | None = None,
) -> tuple[VisionLanguageModel, Any]:
    """(model, processor) from a text LLM directory and a CLIP/SigLIP tower directory (or a vision-language
    checkpoint, for its vision encoder), with a new `connector` (default: LLaVA-1.5's 2-layer MLP), initialised from
    torch's global RNG (seed it for a repeatable start). `feature_layer` and `select_strategy` default to the tower's
    own: a vision-language checkpoint's, else LLaVA-1.5's (-2, "default"). The model is built on the meta device,
    so the connector is all that is initialised.

    The tokenizer and chat template are the LLM's (`template` names a built-in one instead); `<image>` is added when
    missing, the vocabulary grown as `grow_vocab` says; the image processor is the tower's."""
    base, rules = lm_start_config(language_model)
    tokenizer = Tokenizer.from_dir(language_model)
    add_image_token(tokenizer, image_token)
    tower = read_tower_config(vision_encoder)
    parts = ModelConfig(
        language_model=base.language_model,
        vision=replace(
            tower[0],
            feature_layer=tower[0].feature_layer if feature_layer is None else feature_layer,
            select_strategy=select_strategy or tower[0].select_strategy,
        ),
        connector=connector or ConnectorConfig(),
        image_token=image_token,
    )
    config = with_parts(base, tokenizer, parts, tower, template)
    model = io.build_empty(config)
    load_parts(model, language_model, rules, vision_encoder)
    model.processor = processor_for(model, tokenizer)
    return model.eval(), model.processor
