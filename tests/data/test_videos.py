"""Video records in training data (data/videos.py, read by llava_json and SupervisedDataset): the synthetic video
world's own JSON is read as is, each `<video>` takes the tokens and frames the processor gives the same file, paths
stay inside the data folder, and unreadable videos or mixed image/video data are typed errors naming what to fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tiny_vlm import tiny_config, tiny_vlm
from vlbridge.data.collate import SupervisedDataset, collate
from vlbridge.data.hygiene.augment import Augmenter, AugmentOptions
from vlbridge.data.hygiene.output import record_json
from vlbridge.data.llava_json import Record, conversation_texts, load_llava, parse_record
from vlbridge.data.synthetic.video_writer import VideoSynthOptions, synthesize_videos
from vlbridge.data.videos import VideoSampling
from vlbridge.errors import ConfigError, DataError
from vlbridge.lm import templates
from vlbridge.lm.tokenizer_train import train_tokenizer
from vlbridge.model.processor import Processor, processor_for

pytest.importorskip("av")

SIDE = 32
SAMPLING = VideoSampling(fps=1.0, max_frames=4)  # 6-second clips: 4 frames each, the cap spread over the clip


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("videos")
    synthesize_videos(out, VideoSynthOptions(n=4, seed=0, image_size=SIDE, steps=6, fps=2, test_fraction=0.25))
    return out


@pytest.fixture(scope="module")
def records(root: Path) -> list[Record]:
    return load_llava(root / "instruct.json").items + load_llava(root / "captions.json").items


@pytest.fixture(scope="module")
def processor(records: list[Record]) -> Processor:
    tok = train_tokenizer(conversation_texts(records), 300)
    special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    lm = {"vocab_size": tok.vocab_size, "num_hidden_layers": 1, "max_position_embeddings": 1024, **special}
    config = tiny_config(image_size=SIDE, processor=True, lm=lm, image_token_id=tok.token_to_id("<image>"))
    model = tiny_vlm(config)  # 8 px patches: 4 x 4 per frame, 2 x 2 tokens after the video pooling
    return processor_for(model, tok)


def test_the_synthetic_video_world_is_read_as_llava_video_records(root: Path, records: list[Record]) -> None:
    assert len(records) == 6 and all(len(r.videos) == 1 and not r.images for r in records)
    assert records[0].conversations[0]["value"].startswith("<video>\n")
    # LLaVA-Video-178K marks its video with <image>; a list of videos is read as images are
    data = {"video": ["a.mp4", "b.mp4"], "conversations": [{"from": "human", "value": "<image> <image> same?"}]}
    data["conversations"].append({"from": "gpt", "value": "yes"})
    record = parse_record(data, 1)
    assert record.videos == ("a.mp4", "b.mp4") and record.conversations[0]["value"] == "<video> <video> same?"
    assert parse_record(record_json(record), 1) == record  # hygiene steps write video records back whole
    assert record_json(records[0])["video"] == records[0].videos[0]


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"image": "x.png"}, "has both 'image' and 'video'"),
        ({"video": 3}, "'video' must be a path"),
        ({"video": ["a.mp4", "b.mp4"]}, r"1 <video> placeholder\(s\) but 2 video\(s\)"),
        (
            {"conversations": [{"from": "human", "value": "<video><image>"}, {"from": "gpt", "value": "x"}]},
            "holds <ima",
        ),
        ({"conversations": [{"from": "human", "value": "<video>"}, {"from": "gpt", "value": "<video>"}]}, "only human"),
        ({"video": "../outside.mp4"}, "video path '../outside.mp4' leads outside the image folder"),
        ({"video": "videos/missing.mp4"}, r"video file .*missing\.mp4 does not exist"),
    ],
)
def test_bad_video_records_are_data_errors(root: Path, change: dict, pattern: str) -> None:
    record = json.loads((root / "captions.json").read_text())[0] | change
    path = root / "bad.json"
    path.write_text(json.dumps([record]))
    with pytest.raises(DataError, match=pattern) as err:
        load_llava(path)
    assert err.value.path == path and err.value.line == 1


def test_each_video_takes_the_tokens_and_frames_the_processor_gives_it(
    root: Path, records: list[Record], processor: Processor
) -> None:
    dataset = SupervisedDataset(records, root, processor, "chatml", max_length=1024, video=SAMPLING)
    assert len(dataset) == len(records)
    for i in range(len(dataset)):
        record, sample = dataset.record(i), dataset[i]
        prompt = templates.render("chatml", record.conversations, add_generation_prompt=False)
        video = root / record.videos[0]
        expected = processor(text=prompt, videos=[video], fps=SAMPLING.fps, max_frames=SAMPLING.max_frames)
        assert sample["input_ids"].tolist() == expected["input_ids"][0].tolist()
        assert torch.equal(sample["pixel_values"], expected["pixel_values"])  # (4, 3, 32, 32)
        assert sample["video_frames"].tolist() == expected["video_frames"].tolist() == [4]
    tokens = int((dataset[0]["input_ids"] == processor.image_token_id).sum())
    assert tokens == processor.tokens_per_video(4, SIDE, SIDE) == 4 * 4  # 4 x 4 patches pooled 2 x 2 per frame
    batch = collate([dataset[0], dataset[1]], pad_token_id=0)
    assert batch["pixel_values"].shape == (8, 3, SIDE, SIDE) and batch["video_frames"].tolist() == [4, 4]
    plain = SupervisedDataset(records[-1:], root, processor, "plain", max_length=1024, video=SAMPLING)
    assert int((plain[0]["input_ids"] == processor.image_token_id).sum()) == tokens  # plain keeps <video>


def test_an_unreadable_video_is_a_data_error_naming_the_record_and_the_file(
    root: Path, records: list[Record], processor: Processor, tmp_path: Path
) -> None:
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "broken.mp4").write_bytes(b"not a video at all" * 50)
    record = Record("r7", (), records[0].conversations, tmp_path / "data.json", 3, videos=("videos/broken.mp4",))
    with pytest.raises(DataError, match=r"data\.json:3: record 'r7': .*broken\.mp4.*(cannot be decoded|no video)"):
        SupervisedDataset([record], tmp_path, processor, "chatml", max_length=1024)


def test_image_and_video_records_do_not_share_a_dataset_or_a_batch(
    root: Path, records: list[Record], processor: Processor
) -> None:
    image = Record("img", ("a.png",), ({"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "x"}))
    with pytest.raises(DataError, match=r"image records .* and video records .* separate stages"):
        SupervisedDataset([image, records[0]], root, processor, "chatml", max_length=1024)
    dataset = SupervisedDataset(records[:1], root, processor, "chatml", max_length=1024, video=SAMPLING)
    picture = {**dataset[0], "pixel_values": torch.zeros(1, 3, SIDE, SIDE), "video_frames": None}
    with pytest.raises(DataError, match="image samples and video samples"):
        collate([dataset[0], picture], pad_token_id=0)
    with pytest.raises(ConfigError, match="turn the stage's augment off for video data"):
        SupervisedDataset(records, root, processor, "chatml", max_length=1024, augment=Augmenter(AugmentOptions()))
