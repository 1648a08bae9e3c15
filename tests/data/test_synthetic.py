"""The synthetic visual world: determinism, held-out splits, answers re-derived from scenes, balance, formats."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image, ImageFont

from vlbridge.data.synthetic import (
    ANSWERS,
    TYPES,
    Scene,
    SynthOptions,
    render_scene,
    sample_scene,
    synthesize,
    writer,
)
from vlbridge.data.synthetic import scenes as scenes_module
from vlbridge.data.synthetic.scenes import COLOURS, POSITIONS, RADIUS, SHAPES, SIZES, WORDS, text_mask
from vlbridge.data.synthetic.tasks import _PLURAL, QA, caption, propose, question_form, refer, stratified_answer
from vlbridge.data.synthetic.writer import OUTPUT_FILES, _answer_stats
from vlbridge.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small dataset with a large held-out share, so every type appears several times in each split."""
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, SynthOptions(n=240, seed=7, test_fraction=0.4, val_fraction=0.1))
    return out


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _scenes(out: Path) -> dict[str, Scene]:
    return {r["image"]: Scene.from_dict(r["scene"]) for r in _jsonl(out / "scenes.jsonl")}


def _resolve(scene: Scene, ref: str):
    """The single object a referring phrase names; fails if it names none or several (an ambiguous question)."""
    where = re.fullmatch(r"the object in the (.+)", ref)
    if where:
        matches = [o for o in scene.objects if o.position == where[1]]
    else:
        *modifiers, noun = ref.removeprefix("the ").split()
        matches = [
            o
            for o in scene.objects
            if (noun == "object" or o.shape == noun)
            and all(m in (o.size, o.colour) and m in (*SIZES, *COLOURS) for m in modifiers)
        ]
    assert len(matches) == 1, f"{ref!r} names {len(matches)} objects"
    return matches[0]


def _truth(scene: Scene, question: str) -> str:
    """The answer to a question, worked out from the scene independently of the generator."""
    objects = scene.objects
    if m := re.fullmatch(r"What colour is (.+)\?", question):
        assert not set(m[1].split()) & set(COLOURS), "a colour question must not name the colour"
        return _resolve(scene, m[1]).colour
    if m := re.fullmatch(r"What shape is (.+)\?", question):
        assert not set(m[1].split()) & set(SHAPES), "a shape question must not name the shape"
        return _resolve(scene, m[1]).shape
    if question == "How many objects are there?":
        return str(len(objects))
    if m := re.fullmatch(r"How many (\w+) objects are there\?", question):
        return str(sum(o.colour == m[1] for o in objects))
    if m := re.fullmatch(r"How many (\w+) are there\?", question):
        singular = {s + ("es" if s.endswith("s") else "s"): s for s in SHAPES}[m[1]]
        return str(sum(o.shape == singular for o in objects))
    if m := re.fullmatch(r"Where is (.+)\?", question):
        return _resolve(scene, m[1]).position
    if m := re.fullmatch(r"Is (the .+?) (left of|right of|above|below) (the .+)\?", question):
        a, b = _resolve(scene, m[1]), _resolve(scene, m[3])
        ax, ay, bx, by = a.x, a.y, b.x, b.y
        holds = {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}[m[2]]
        gap = abs(ax - bx) if m[2] in ("left of", "right of") else abs(ay - by)
        assert gap > 0.1, "relations are only asked between objects clearly apart on that axis"
        return "yes" if holds else "no"
    if m := re.fullmatch(r"Is there an? (\w+) (\w+)\?", question):
        return "yes" if any(o.colour == m[1] and o.shape == m[2] for o in objects) else "no"
    if question == "What does the text say?":
        return scene.text
    if m := re.fullmatch(r"Describe the object in the (.+)\.", question):
        o = _resolve(scene, f"the object in the {m[1]}")
        return f"{o.size} {o.colour} {o.shape}"
    raise AssertionError(f"unrecognised question {question!r}")


def _check_multiple_choice(scene: Scene, question: str, answer: str, choices: list[str] | None) -> None:
    stem, *options, instruction = question.split("\n")
    assert instruction == "Answer with the option's letter."
    letters = [o.split(". ", 1)[0] for o in options]
    texts = [o.split(". ", 1)[1] for o in options]
    assert letters == ["A", "B", "C", "D"] and len(set(texts)) == 4
    assert choices is None or choices == texts
    truth = _truth(scene, stem)
    assert texts[letters.index(answer)] == truth and texts.count(truth) == 1


def _check(scene: Scene, question: str, answer: str, choices: list[str] | None = None) -> None:
    if question.endswith("Answer with the option's letter."):
        _check_multiple_choice(scene, question, answer, choices)
    else:
        assert _truth(scene, question) == answer, question


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    runs = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    for out, seed in zip(runs, (3, 3, 4), strict=True):
        synthesize(out, SynthOptions(n=30, seed=seed))
    files = sorted(p.relative_to(runs[0]) for p in runs[0].rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(runs[1]) for p in runs[1].rglob("*") if p.is_file())
    assert len(files) == 30 + len(OUTPUT_FILES)
    for rel in files:
        assert (runs[0] / rel).read_bytes() == (runs[1] / rel).read_bytes(), rel
    assert (runs[0] / "instruct.json").read_bytes() != (runs[2] / "instruct.json").read_bytes()
    image = "images/train_000004.png"
    assert (runs[0] / image).read_bytes() != (runs[2] / image).read_bytes()


def test_images_rendered_by_worker_processes_equal_those_rendered_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synthesize(tmp_path / "one", SynthOptions(n=30, seed=5))
    monkeypatch.setattr(writer, "RENDERS_PER_WORKER", 8)
    monkeypatch.setattr(writer.os, "sched_getaffinity", lambda pid: {0, 1})  # two workers even on a one-core runner
    started = []
    monkeypatch.setattr(writer, "ProcessPoolExecutor", _recording(writer.ProcessPoolExecutor, started))
    synthesize(tmp_path / "pool", SynthOptions(n=30, seed=5))
    assert started == [2]
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    for rel in files:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "pool" / rel).read_bytes(), rel


def _recording(executor: type, started: list[int]) -> type:
    class Recording(executor):  # type: ignore[misc, valid-type]
        def __init__(self, workers: int, **kwargs: object) -> None:
            started.append(workers)
            super().__init__(workers, **kwargs)

    return Recording


def test_an_index_renders_the_same_image_whatever_n(tmp_path: Path) -> None:
    synthesize(tmp_path / "small", SynthOptions(n=10, seed=1, test_fraction=0.2, val_fraction=0.0))
    synthesize(tmp_path / "large", SynthOptions(n=20, seed=1, test_fraction=0.2, val_fraction=0.0))
    for name in ("train_000000.png", "train_000007.png", "test_000001.png"):
        assert (tmp_path / "small/images" / name).read_bytes() == (tmp_path / "large/images" / name).read_bytes()


def test_held_out_scenes_are_disjoint_from_training(dataset: Path) -> None:
    rows = _jsonl(dataset / "scenes.jsonl")
    by_split = {s: [Scene.from_dict(r["scene"]) for r in rows if r["split"] == s] for s in ("train", "val", "test")}
    assert [len(v) for v in by_split.values()] == [120, 24, 96]
    for held_out in ("val", "test"):
        assert not {s.seed for s in by_split["train"]} & {s.seed for s in by_split[held_out]}
        assert not {s.signature() for s in by_split["train"]} & {s.signature() for s in by_split[held_out]}
    assert not {s.signature() for s in by_split["val"]} & {s.signature() for s in by_split["test"]}


def test_every_question_type_is_present(dataset: Path) -> None:
    assert {r["type"] for r in _jsonl(dataset / "test.jsonl")} == set(TYPES)
    assert {r["type"] for r in _jsonl(dataset / "val.jsonl")} == set(TYPES)
    stats = json.loads((dataset / "stats.json").read_text())
    assert all(stats["splits"]["train"]["types"][t]["count"] > 0 for t in TYPES)


def test_scenes_rebuild_from_their_seed(dataset: Path) -> None:
    for scene in list(_scenes(dataset).values())[:50]:
        assert sample_scene(scene.seed) == scene
        assert Scene.from_dict(json.loads(json.dumps(scene.to_dict()))) == scene


def test_held_out_answers_are_correct_for_the_scene(dataset: Path) -> None:
    scenes = _scenes(dataset)
    for split in ("val", "test"):
        for row in _jsonl(dataset / f"{split}.jsonl"):
            assert ("choices" in row) == (row["type"] == "multiple_choice")
            _check(scenes[row["image"]], row["question"], row["answer"], row.get("choices"))


def test_instruction_answers_are_correct_for_the_scene(dataset: Path) -> None:
    scenes = _scenes(dataset)
    questions = [r for r in json.loads((dataset / "instruct.json").read_text()) if not r["id"].endswith("_caption")]
    assert len(questions) == 120
    for record in questions:
        turns = record["conversations"]
        for human, gpt in zip(turns[::2], turns[1::2], strict=True):
            _check(scenes[record["image"]], human["value"].removeprefix("<image>\n"), gpt["value"])


def test_captions_give_each_object_as_two_facts_and_each_colour_and_shape_with_its_count(dataset: Path) -> None:
    scenes = _scenes(dataset)
    orders = Counter()
    for record in json.loads((dataset / "captions.json").read_text()):
        scene, text = scenes[record["image"]], record["conversations"][1]["value"]
        noun = "shape" if len(scene.objects) == 1 else "shapes"
        prefix, suffix = f"{len(scene.objects)} {noun}: ", f". The text says {scene.text}."
        assert text.startswith(prefix) and text.endswith(suffix), text
        *lists, tallies = [part.split(", ") for part in text.removeprefix(prefix).removesuffix(suffix).split("; ")]
        named, placed = lists
        names = {f"{refer(scene, o, frozenset({'position'})).removeprefix('the ')} {o.position}" for o in scene.objects}
        assert sorted(named) == sorted(names)  # every object by its name, then its region
        assert sorted(placed) == sorted(f"{o.position} {o.size} {o.colour} {o.shape}" for o in scene.objects)
        counted = Counter(o.colour for o in scene.objects) + Counter(_PLURAL[o.shape] for o in scene.objects)
        assert sorted(tallies) == sorted(f"{key} {n}" for key, n in counted.items())  # "red 2", "stars 1"
        if len(scene.objects) >= 3:
            cells = [[next(o.cell for o in scene.objects if o.position in fact) for fact in facts] for facts in lists]
            orders.update(order == sorted(order) for order in cells)
            orders["same order"] += cells[0] == cells[1]
    assert orders[False] > 2 * orders[True]  # objects in a random order, not reading order
    assert orders["same order"] < orders[False] / 4  # and the two lists in different orders


def test_region_labels_describe_every_region_of_each_training_image(dataset: Path) -> None:
    scenes = _scenes(dataset)
    rows = _jsonl(dataset / "regions.jsonl")
    train = {r["image"] for r in _jsonl(dataset / "scenes.jsonl") if r["split"] == "train"}
    assert len(rows) == len(train) == 120 and {r["image"] for r in rows} == train
    for row in rows:
        scene, labels = scenes[row["image"]], row["labels"]
        assert row["grid"] == 3 and set(labels) == {"kind", "shape", "colour", "size", "word", "position"}
        objects = {o.cell: o for o in scene.objects}
        for cell in range(9):
            obj = objects.get(cell)
            kind = "object" if obj else "text" if cell == scene.text_cell else "empty"
            assert labels["kind"][cell] == kind
            assert labels["position"][cell] == POSITIONS[cell] == (obj.position if obj else POSITIONS[cell])
            assert labels["word"][cell] == (scene.text if kind == "text" else None)
            for name in ("shape", "colour", "size"):
                assert labels[name][cell] == (getattr(obj, name) if obj else None)


def test_instruct_mixes_in_every_caption(dataset: Path) -> None:
    captions = json.loads((dataset / "captions.json").read_text())
    instruct = {r["id"]: r for r in json.loads((dataset / "instruct.json").read_text())}
    for record in captions:
        assert instruct[f"{record['id']}_caption"]["conversations"] == record["conversations"]


@pytest.mark.parametrize("name", ["captions.json", "instruct.json"])
def test_conversations_are_valid_llava_json(dataset: Path, name: str) -> None:
    records = json.loads((dataset / name).read_text())
    expected = 120 if name == "captions.json" else 240  # instruct: the questions and the caption of each image
    assert len(records) == expected and len({r["id"] for r in records}) == expected
    turn_counts = Counter()
    for record in records:
        assert set(record) == {"id", "image", "conversations"}
        turns = record["conversations"]
        assert len(turns) >= 2 and len(turns) % 2 == 0
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert turns[0]["value"].startswith("<image>\n")
        assert sum(t["value"].count("<image>") for t in turns) == 1
        assert all(t["value"].strip() for t in turns)
        if not record["id"].endswith("_caption"):
            turn_counts[len(turns) // 2] += 1
    with Image.open(dataset / records[0]["image"]) as image:
        assert image.size == (96, 96) and image.mode == "RGB"
    if name == "instruct.json":
        assert min(turn_counts) >= 2 and len(turn_counts) >= 3  # multi-turn, of varying length


def test_held_out_answers_are_exactly_balanced(dataset: Path) -> None:
    rows = _jsonl(dataset / "test.jsonl") + _jsonl(dataset / "val.jsonl")
    for split in ("test", "val"):
        for kind in TYPES:
            counts = Counter(r["answer"] for r in rows if r["type"] == kind and r["question_id"].startswith(split))
            per_answer = [counts[a] for a in ANSWERS[kind]]
            assert max(per_answer) - min(per_answer) <= 1, (split, kind, counts)


def test_training_answers_are_balanced(dataset: Path) -> None:
    types = json.loads((dataset / "stats.json").read_text())["splits"]["train"]["types"]
    for kind in ("relation", "existence", "count", "colour", "shape", "position", "multiple_choice"):
        counts = list(types[kind]["answers"].values())
        mean = sum(counts) / len(counts)
        assert min(counts) >= 0.6 * mean and max(counts) <= 1.4 * mean, (kind, counts)
    for kind in ("relation", "existence"):
        assert 0.45 <= types[kind]["majority_baseline"] <= 0.55


def test_many_turns_repeat_types_but_never_a_question(tmp_path: Path) -> None:
    synthesize(tmp_path, SynthOptions(n=60, seed=2, test_fraction=0.1, val_fraction=0.0, turns=[12, 14]))
    scenes = _scenes(tmp_path)
    records = [r for r in json.loads((tmp_path / "instruct.json").read_text()) if not r["id"].endswith("_caption")]
    lengths = []
    for record in records:
        humans = [t["value"].removeprefix("<image>\n") for t in record["conversations"][::2]]
        assert len(humans) == len(set(humans)) <= 14
        for question, gpt in zip(humans, record["conversations"][1::2], strict=True):
            _check(scenes[record["image"]], question, gpt["value"])
        lengths.append(len(humans))
    assert sum(lengths) / len(lengths) > 10  # past the nine types: types come again
    types = json.loads((tmp_path / "stats.json").read_text())["splits"]["train"]["types"]
    counts = list(types["colour"]["answers"].values())
    assert max(counts) - min(counts) <= 0.4 * sum(counts) / len(counts)
    with pytest.raises(ConfigError, match="turns"):
        synthesize(tmp_path / "bad", SynthOptions(n=10, seed=0, turns=[3, 2]))


def _human_turns(out: Path) -> dict[str, list[tuple[str, str]]]:
    """Per training image: its question turns (question, answer), captions left out."""
    records = [r for r in json.loads((out / "instruct.json").read_text()) if not r["id"].endswith("_caption")]
    turns = {}
    for record in records:
        humans = [t["value"].removeprefix("<image>\n") for t in record["conversations"][::2]]
        turns[record["image"]] = list(zip(humans, [t["value"] for t in record["conversations"][1::2]], strict=True))
    return turns


def _is_relation(question: str) -> bool:
    return re.fullmatch(r"Is (the .+?) (left of|right of|above|below) (the .+)\?", question) is not None


def test_focus_adds_turns_and_spatial_names_objects_by_region_in_training_only(tmp_path: Path) -> None:
    plain, focused = tmp_path / "plain", tmp_path / "focused"
    synthesize(plain, SynthOptions(n=60, seed=5, test_fraction=0.2, val_fraction=0.1))
    focus = ["relation", "relation", "multiple_choice"]
    synthesize(focused, SynthOptions(n=60, seed=5, test_fraction=0.2, val_fraction=0.1, focus=focus, spatial=0.5))
    for name in ("test.jsonl", "val.jsonl", "scenes.jsonl", "regions.jsonl"):  # the same images, the same tests
        assert (plain / name).read_bytes() == (focused / name).read_bytes(), name
    scenes, before, after = _scenes(focused), _human_turns(plain), _human_turns(focused)
    relations = {"before": 0, "after": 0, "by_region": 0}
    for image, turns in after.items():
        for question, answer in turns:
            _check(scenes[image], question, answer)
        assert len(set(turns)) == len(turns)
        posable = 2 if len(scenes[image].objects) > 1 else 0  # two objects always differ in row or column
        assert sum(_is_relation(q) for q, _ in turns) >= posable
        assert sum(q.endswith("Answer with the option's letter.") for q, _ in turns) >= 1
        relations["before"] += sum(_is_relation(q) for q, _ in before[image])
        relations["after"] += sum(_is_relation(q) for q, _ in after[image])
        relations["by_region"] += sum(_is_relation(q) and "the object in the" in q for q, _ in turns)
    assert relations["after"] >= relations["before"] + 60
    assert 0.5 < relations["by_region"] / relations["after"] < 0.9  # each of two objects by region at 0.5: 3/4
    assert not any("the object in the" in q for turns in before.values() for q, _ in turns if _is_relation(q))
    with pytest.raises(ConfigError, match="focus names unknown question types"):
        synthesize(tmp_path / "bad", SynthOptions(n=10, seed=0, focus=["colours"]))
    with pytest.raises(ConfigError, match="spatial"):
        synthesize(tmp_path / "bad", SynthOptions(n=10, seed=0, spatial=1.5))


def test_varied_names_still_pick_out_one_object_and_join_size_to_an_attribute() -> None:
    forms = Counter()
    for seed in range(400):
        scene = sample_scene(seed)
        varied = caption(scene, random.Random(seed), varied_names=1.0)
        named = varied.split(": ", 1)[1].split("; ")[0].split(", ")
        for fact in named:
            words = fact.split()
            obj = next(o for o in scene.objects if fact.endswith(" " + o.position))
            attributes = words[: len(words) - len(obj.position.split())]
            matching = [o for o in scene.objects if all(w in ("object", o.size, o.colour, o.shape) for w in attributes)]
            assert matching == [obj], (fact, scene)  # the name fits its own object alone
            forms[tuple("size" if w in SIZES else "colour" if w in COLOURS else "noun" for w in attributes)] += 1
    assert caption(sample_scene(0), random.Random(0), varied_names=0.0) == caption(sample_scene(0), random.Random(0))
    assert forms[("size", "noun")] > 50 and forms[("size", "colour", "noun")] > 50  # "small star", "small red object"
    with pytest.raises(ConfigError, match="varied_names"):
        synthesize(Path("unused"), SynthOptions(n=10, seed=0, varied_names=2.0))


def test_drills_are_text_only_relation_conversations_between_regions(tmp_path: Path) -> None:
    synthesize(tmp_path / "plain", SynthOptions(n=20, seed=1))
    synthesize(tmp_path / "drilled", SynthOptions(n=20, seed=1, drills=30))
    plain = tmp_path / "plain"
    drilled = json.loads((tmp_path / "drilled" / "drills.json").read_text())
    assert not (plain / "drills.json").exists() and len(drilled) == 30
    for name in ("instruct.json", "captions.json"):  # the drills are a file of their own; the rest is unchanged
        assert (plain / name).read_bytes() == (tmp_path / "drilled" / name).read_bytes()
    answers = Counter()
    for record in drilled:
        assert "image" not in record and record["id"].startswith("drill_")
        turns = record["conversations"]
        assert len(turns) == 8
        for human, gpt in zip(turns[::2], turns[1::2], strict=True):
            m = re.fullmatch(
                r"Is the object in the (.+?) (left of|right of|above|below) the object in the (.+)\?", human["value"]
            )
            assert m is not None, human["value"]
            a, b = POSITIONS.index(m[1]), POSITIONS.index(m[3])
            axis = 1 if m[2] in ("left of", "right of") else 0
            first, second = divmod(a, 3)[axis], divmod(b, 3)[axis]
            assert first != second, "a drill compares regions on an axis where they differ"
            assert gpt["value"] == ("yes" if (first < second) == (m[2] in ("left of", "above")) else "no")
            answers[gpt["value"]] += 1
    assert min(answers.values()) > 40
    with pytest.raises(ConfigError, match="drills"):
        synthesize(tmp_path / "bad", SynthOptions(n=10, seed=0, drills=-1))


def test_spatial_referents_name_regions_and_keep_answers_right() -> None:
    rng = random.Random(0)
    named = Counter()
    for seed in range(60):
        scene = sample_scene(seed)
        for kind, answer in (("relation", "yes"), ("relation", "no"), ("multiple_choice", "C")):
            qa = propose(kind, scene, answer, rng, spatial=1.0)
            if qa is None:
                continue
            _check(scene, qa.question, qa.answer, list(qa.choices) if qa.choices else None)
            stem = qa.question.split("\n")[0]
            named[
                kind, stem == "What does the text say?" or stem.count("the object in the ") == (kind == "relation") + 1
            ] += 1
    assert named["relation", False] == named["multiple_choice", False] == 0
    assert named["relation", True] > 40 and named["multiple_choice", True] > 40


@pytest.mark.parametrize(
    ("question", "form"),
    [
        ("<image>\nWhat colour is the small star?", "What colour is the SIZE SHAPE?"),
        ("Is there an orange cross?", "Is there a COLOUR SHAPE?"),
        ("Is there a red cross?", "Is there a COLOUR SHAPE?"),
        ("How many diamonds are there?", "How many SHAPE are there?"),
        ("Is the star left of the object in the top middle?", "Is the SHAPE RELATION the object in the PLACE?"),
        (
            "What does the text say?\nA. CAT\nB. DOG\nC. SUN\nD. 7\nAnswer with the option's letter.",
            "What does the text say?",
        ),
    ],
)
def test_question_form_names_the_slots(question: str, form: str) -> None:
    assert question_form(question) == form


def test_every_held_out_question_has_a_form_without_vocabulary(dataset: Path) -> None:
    vocabulary = re.compile(r"\b(" + "|".join([*COLOURS, *SHAPES, *_PLURAL.values(), *SIZES, *POSITIONS]) + r")\b")
    forms = {question_form(row["question"]) for row in _jsonl(dataset / "test.jsonl")}
    assert forms and not [f for f in forms if vocabulary.search(f)]
    assert len(forms) < len(_jsonl(dataset / "test.jsonl"))  # forms group questions


def test_stratified_answers_stay_level_at_every_prefix() -> None:
    for kind in ("count", "relation", "description"):
        counts = Counter()
        for k in range(2 * len(ANSWERS[kind]) + 5):
            counts[stratified_answer(kind, k, 0, "test")] += 1
            level = [counts[a] for a in ANSWERS[kind]]
            assert max(level) - min(level) <= 1


def test_stats_report_the_majority_baseline(dataset: Path) -> None:
    stats = _answer_stats([(sample_scene(0), QA("relation", "q", a)) for a in ("yes", "yes", "yes", "no")])
    relation = stats["types"]["relation"]
    assert relation["majority_baseline"] == 0.75 and relation["majority_answer"] == "yes"
    assert relation["answers"] == {"yes": 3, "no": 1} and stats["questions"] == 4
    assert relation["unbound_baseline"] == 0.5
    assert stats["types"]["colour"]["count"] == 0

    written = json.loads((dataset / "stats.json").read_text())["splits"]["test"]
    rows = _jsonl(dataset / "test.jsonl")
    assert written["questions"] == len(rows)
    for kind in TYPES:
        answers = Counter(r["answer"] for r in rows if r["type"] == kind)
        assert written["types"][kind]["count"] == answers.total()
        assert written["types"][kind]["majority_baseline"] == pytest.approx(max(answers.values()) / answers.total())
        assert {a: c for a, c in written["types"][kind]["answers"].items() if c} == dict(answers)


def test_propose_gives_the_requested_answer_or_none() -> None:
    rng = random.Random(0)
    for seed in range(40):
        scene = sample_scene(seed)
        for kind in TYPES:
            for answer in ANSWERS[kind][:12]:
                qa = propose(kind, scene, answer, rng)
                if qa is not None:
                    assert qa.answer == answer and qa.type == kind
                    _check(scene, qa.question, qa.answer, list(qa.choices) if qa.choices else None)


def test_absent_pairs_test_binding_when_the_scene_allows() -> None:
    """A "no" existence question names a colour and a shape the scene holds, on different objects, when it can."""
    rng = random.Random(0)
    for seed in range(200):
        scene = sample_scene(seed)
        present = {(o.colour, o.shape) for o in scene.objects}
        colours, shapes = {c for c, _ in present}, {s for _, s in present}
        unbound = [(c, s) for c in colours for s in shapes if (c, s) not in present]
        colour, shape = propose("existence", scene, "no", rng).question.rstrip("?").split()[-2:]
        assert (colour, shape) not in present
        assert (colour in colours and shape in shapes) == bool(unbound), (scene, colour, shape)


def test_objects_stay_inside_their_own_region() -> None:
    for seed in range(300):
        scene = sample_scene(seed)
        cells = [o.cell for o in scene.objects] + [scene.text_cell]
        assert 1 <= len(scene.objects) <= 6 and len(set(cells)) == len(cells)
        assert len({(o.colour, o.shape) for o in scene.objects}) == len(scene.objects)
        for o in scene.objects:
            r = RADIUS[o.size]
            assert o.col / 3 < o.x - r and o.x + r < (o.col + 1) / 3
            assert o.row / 3 < o.y - r and o.y + r < (o.row + 1) / 3
    assert {sample_scene(s).text for s in range(300)} == set(WORDS)


@pytest.mark.parametrize("size", [64, 96])
def test_rendering_paints_each_object_in_its_colour(size: int) -> None:
    for seed in range(20):
        scene = sample_scene(seed)
        image = render_scene(scene, size)
        assert image.size == (size, size)
        for o in scene.objects:
            pixel = image.getpixel((int(o.x * size), int(o.y * size)))
            assert max(abs(p - q) for p, q in zip(pixel, COLOURS[o.colour], strict=True)) < 40, (o, pixel)


def test_text_is_drawn_large_enough_with_either_font(monkeypatch: pytest.MonkeyPatch) -> None:
    assert text_mask("CAT", 25).height >= 15
    monkeypatch.setattr(scenes_module, "_font", lambda px: ImageFont.load_default_imagefont())
    bitmap = text_mask("CAT", 25)
    assert 15 <= bitmap.height <= 40 and bitmap.getextrema() == (0, 255)


def test_bad_arguments_raise_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="n must be"):
        synthesize(tmp_path / "a", SynthOptions(n=0, seed=0))
    with pytest.raises(ConfigError, match="test_fraction"):
        synthesize(tmp_path / "a", SynthOptions(n=10, seed=0, test_fraction=1.5))
    with pytest.raises(ConfigError, match="no training images"):
        synthesize(tmp_path / "a", SynthOptions(n=2, seed=0, test_fraction=0.5, val_fraction=0.4))
    with pytest.raises(ConfigError, match="image_size"):
        synthesize(tmp_path / "a", SynthOptions(n=10, seed=0, image_size=16))
    synthesize(tmp_path / "b", SynthOptions(n=12, seed=0))
    with pytest.raises(DataError, match="not empty"):
        synthesize(tmp_path / "b", SynthOptions(n=6, seed=0))
    synthesize(tmp_path / "b", SynthOptions(n=6, seed=0, test_fraction=0.5, val_fraction=0.0), overwrite=True)
    assert len(list((tmp_path / "b/images").iterdir())) == 6
