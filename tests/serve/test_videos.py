"""Video parts through the real `openai` client (serve/videos.py): a `video_url` part as a base64 MP4 data URL or a
file:// URL in the allowed media folder gets the reply and prompt tokens the model and processor give the same video
offline, sampled at the request's video_fps / video_max_frames; a bad video or a request over the limits is a 400."""

from __future__ import annotations

import base64
from pathlib import Path

import openai
import pytest

import vlbridge
from serving import live_server, sample_data_url
from video_files import write_mp4
from vlbridge.serve.auth import MODALITIES, APIKey, KeyStore
from vlbridge.serve.limits import Limits

pytest.importorskip("av")

QUESTION = "What happens?"
FULL, IMAGES = "key-full-0123456789", "key-images-0123456789"
KEYS = KeyStore([APIKey(FULL, "full", frozenset(MODALITIES)), APIKey(IMAGES, "images", frozenset({"text", "image"}))])


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    write_mp4(folder / "clip.mp4", 12, 4)  # 3 seconds, 32 px
    return folder


@pytest.fixture(scope="module")
def client(media: Path):
    with live_server(media=media, keys=KEYS, limits=Limits(max_video_frames=8, video_max_frames=8)) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key=FULL, max_retries=0)


def _ask(client: openai.OpenAI, url: str, **extra: object):
    parts = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": QUESTION}]
    messages = [{"role": "user", "content": parts}]
    return client.chat.completions.create(
        model="m", messages=messages, temperature=0, max_tokens=6, extra_body=extra or None
    )


def _data_url(path: Path) -> str:
    return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()


@pytest.mark.parametrize(
    ("extra", "fps", "max_frames"), [({}, 1.0, 8), ({"video_fps": 4, "video_max_frames": 5}, 4, 5)]
)
def test_a_video_part_is_answered_as_the_model_answers_the_same_video(
    client: openai.OpenAI, media: Path, extra: dict, fps: float, max_frames: int
) -> None:
    reply = _ask(client, _data_url(media / "clip.mp4"), **extra)
    model, processor = vlbridge.load()
    prompt = processor.apply_chat_template([{"role": "user", "content": f"<video>\n{QUESTION}"}])
    inputs = processor(text=prompt, videos=[media / "clip.mp4"], fps=fps, max_frames=max_frames)
    assert int(inputs["video_frames"][0]) == min(3 * fps, max_frames)  # 3 or 5 frames
    assert reply.usage.prompt_tokens == inputs["input_ids"].shape[1]
    ids = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert reply.choices[0].message.content == processor.decode(ids[0, inputs["input_ids"].shape[1] :]).strip()
    local = _ask(client, (media / "clip.mp4").as_uri(), **extra)  # a file in the allowed folder reads the same
    assert (local.usage.prompt_tokens, local.choices[0].message.content) == (
        reply.usage.prompt_tokens,
        reply.choices[0].message.content,
    )


def test_bad_videos_and_requests_over_the_limits_are_400s(client: openai.OpenAI, media: Path, tmp_path: Path) -> None:
    (media / "broken.mp4").write_bytes(b"not a video" * 100)
    cases = [
        (_data_url(media / "broken.mp4"), {}, "video 0: the file cannot be decoded as a video"),
        ((media / "broken.mp4").as_uri(), {}, "video 0: the file cannot be decoded as a video"),
        ("data:video/mp4;base64,@@@", {}, "not valid base64"),
        ("data:image/png;base64,AAAA", {}, "data URLs must be base64 videos"),
        ("https://example.com/a.mp4", {}, "http(s) video URLs are not fetched"),
        (_data_url(media / "clip.mp4"), {"video_max_frames": 9}, "over the server's limit of 8 frames"),
    ]
    for url, extra, message in cases:
        with pytest.raises(openai.BadRequestError) as err:
            _ask(client, url, **extra)
        assert message in err.value.body["message"], err.value.body
        assert str(media) not in err.value.body["message"] or url.startswith("file:")
    with pytest.raises(openai.PermissionDeniedError, match="'images' may not send videos"):
        _ask(client.with_options(api_key=IMAGES), _data_url(media / "clip.mp4"))
    outside = write_mp4(tmp_path / "outside.mp4", 4, 4)
    with pytest.raises(openai.PermissionDeniedError, match="outside the allowed media folder"):
        _ask(client, outside.as_uri())
    both = [
        {"type": "image_url", "image_url": {"url": sample_data_url()}},
        {"type": "video_url", "video_url": {"url": _data_url(media / "clip.mp4")}},
    ]
    with pytest.raises(openai.BadRequestError, match="images or videos, not both"):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": both}], max_tokens=2)
