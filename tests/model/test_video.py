"""Video through the model: tokens per video for each connector (equal to what it places), frames encoded in chunks
give the same result, LLaVA-Mini's per-frame pre-fusion is the average over frames, greedy decoding with a KV cache
equals full forwards with a video in the prompt, and the processor expands `<video>` for a real MP4 file."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

import vlbridge
from tiny_vlm import IMAGE_TOKEN, tiny_config, tiny_vlm
from video_files import write_mp4
from vlbridge.errors import ConfigError, ContextOverflowError, ModalityError, PlaceholderError
from vlbridge.model.vlm import VisionLanguageModel

PERCEIVER = {"num_latents": 4, "depth": 1, "max_frames": 4, "num_heads": 2, "head_dim": 8}
MINI = {"prefusion_layers": 1}

# 32 px images with 8 px patches: a 4 x 4 grid of 16 patches per frame
TOKENS_PER_FRAME = [("mlp", {}, 4), ("pool", {}, 4), ("patch_merger", {}, 1), ("mini", MINI, 1), ("tome", {}, None)]


def _model(connector: str, options: dict[str, Any] | None = None, **fields: Any) -> VisionLanguageModel:
    return tiny_vlm(tiny_config(connector, options, image_size=32, **fields))


def _prompt(n_visual: int, text: list[int], pad: int = 0) -> tuple[list[int], list[int]]:
    ids = [0] * pad + [5] + [IMAGE_TOKEN] * n_visual + text
    return ids, [0] * pad + [1] * (len(ids) - pad)


@pytest.mark.parametrize(("connector", "options", "per_frame"), TOKENS_PER_FRAME)
def test_tokens_per_video_match_what_the_connector_places(connector: str, options: dict, per_frame: int | None) -> None:
    model = _model(connector, options)
    if per_frame is None:  # tome: a frame takes what an image takes
        per_frame = model.tokens_per_image(32, 32)
    assert model.tokens_per_video(3, 32, 32) == 3 * per_frame
    frames = torch.randn(3, 3, 32, 32)
    ids = torch.tensor([_prompt(3 * per_frame, [7, 8])[0]])
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=frames, video_frames=torch.tensor([3])).logits
        assert logits.shape[:2] == ids.shape
        with pytest.raises(PlaceholderError):  # one frame too many for the placeholders
            model(input_ids=ids, pixel_values=torch.randn(4, 3, 32, 32), video_frames=torch.tensor([4]))


def test_perceiver_takes_a_whole_video_as_its_latents_and_gated_xattn_refuses_video() -> None:
    perceiver = _model("perceiver", PERCEIVER)
    assert perceiver.tokens_per_video(4, 32, 32) == 4
    with pytest.raises(ConfigError, match="at most 4"):
        perceiver.tokens_per_video(5, 32, 32)
    with pytest.raises(ModalityError, match="gated_xattn"):
        _model("gated_xattn").tokens_per_video(2, 32, 32)


@pytest.mark.parametrize(("connector", "options"), [("mlp", {}), ("perceiver", PERCEIVER), ("mini", MINI)])
def test_chunked_frame_encoding_equals_all_at_once(connector: str, options: dict) -> None:
    model = _model(connector, options)
    n = model.tokens_per_video(4, 32, 32)
    ids = torch.tensor([_prompt(n, [7, 8, 9])[0]])
    frames, counts = torch.randn(4, 3, 32, 32), torch.tensor([4])
    with torch.no_grad():
        whole = model(input_ids=ids, pixel_values=frames, video_frames=counts).logits
        model.config = dataclasses.replace(model.config, video_chunk_frames=1)
        chunked = model(input_ids=ids, pixel_values=frames, video_frames=counts).logits
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


def test_mini_fuses_the_text_with_each_frame_alone_and_averages() -> None:
    model = _model("mini", MINI)
    frames = torch.randn(2, 3, 32, 32)
    text = [7, 8, 9, 10]

    def fused_text(pixels: torch.Tensor) -> torch.Tensor:
        ids = torch.tensor([_prompt(pixels.shape[0], text)[0]])
        with torch.no_grad():
            embeds, _ = model.embed(ids, pixels, video_frames=torch.tensor([pixels.shape[0]]))
        return embeds[0, -len(text) :]

    both = fused_text(frames)
    alone = (fused_text(frames[:1]) + fused_text(frames[1:])) / 2
    torch.testing.assert_close(both, alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fused_text(frames[:1]), fused_text(frames[1:]))


@pytest.mark.parametrize(("connector", "options"), [("mlp", {}), ("perceiver", PERCEIVER), ("mini", MINI)])
def test_cached_decoding_equals_full_forwards_with_videos_in_a_left_padded_batch(connector: str, options: dict) -> None:
    model = _model(connector, options)
    counts = [3, 2]
    rows = [_prompt(model.tokens_per_video(3, 32, 32), [7, 8]), _prompt(model.tokens_per_video(2, 32, 32), [9], 0)]
    width = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([[0] * (width - len(i)) + i for i, _ in rows])
    mask = torch.tensor([[0] * (width - len(m)) + m for _, m in rows])
    frames, video_frames = torch.randn(sum(counts), 3, 32, 32), torch.tensor(counts)
    out = model.generate(ids, mask, frames, video_frames=video_frames, max_new_tokens=5, eos_token_id=())
    seq = ids
    with torch.no_grad():
        for _ in range(5):
            grown = torch.cat([mask, torch.ones(2, seq.shape[1] - width, dtype=mask.dtype)], dim=1)
            logits = model(seq, grown, frames, video_frames=video_frames).logits
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def test_processor_expands_video_for_a_real_mp4_and_chat_decoding_matches(clip_llava_dir: Path, tmp_path: Path) -> None:
    model, processor = vlbridge.load(clip_llava_dir)
    path = write_mp4(tmp_path / "clip.mp4", 12, 4)
    inputs = processor(text="<video>\nwhat moves?", videos=[path], fps=1.0)
    assert inputs["video_frames"].tolist() == [3] and inputs["pixel_values"].shape[0] == 3
    visual = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert visual == model.tokens_per_video(3, 32, 32) == 3 * 4  # 16 patches pooled 2 x 2 per frame
    capped = processor(text="<video>", videos=[path], fps=4.0, max_frames=5)
    assert capped["video_frames"].tolist() == [5]
    out = model.generate(**inputs, max_new_tokens=4, eos_token_id=(), stop_strings=())
    t = inputs["input_ids"].shape[1]
    new = out[0, t:].tolist()
    with torch.no_grad():
        logits = model(input_ids=out, pixel_values=inputs["pixel_values"], video_frames=inputs["video_frames"]).logits
    logits[..., model.config.image_token_id] = float("-inf")  # generation never says <image> (this model would)
    assert logits[0, t - 1 : -1].argmax(-1).tolist() == new
    processor.max_length = visual  # frames past the context are refused, counted as visual tokens
    with pytest.raises(ContextOverflowError, match=f"{visual} visual"):
        processor(text="<video>\nwhat moves?", videos=[path], fps=1.0)
    with pytest.raises(PlaceholderError, match="no videos"):
        processor(text="<video> hi")
    with pytest.raises(PlaceholderError, match="images or videos"):
        processor(text="<video><image>", videos=[path], images=[torch.zeros(1)])
