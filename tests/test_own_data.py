"""Training on one's own data: a file or a datasets dataset trains, predicts, calibrates and benchmarks like a GLUE
task; bad data gets one line.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from core import predict
from core.catalog import read_catalog
from core.checkpoint import load_checkpoint, read_config
from core.errors import UserError
from interpret.querylog import QueryLog
from interpret.report import JSON_FILE
from interpret.report import main as report_main
from training import benchmark, calibration
from training import train as train_module
from training.data import Table, checkpoint_split, discover_classes

TOPICS = {
    "sports": ["goal", "match", "team", "coach"],
    "politics": ["vote", "senate", "law", "party"],
    "science": ["atom", "cell", "lab", "gene"],
}
TOPIC_ROWS = 60


def write_topics(path: Path, rows: int = TOPIC_ROWS) -> Path:
    """A CSV of headlines, one sentence each, in three classes named by strings."""
    generator = random.Random(0)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "headline", "topic"])
        for row in range(rows):
            topic = list(TOPICS)[row % 3]
            writer.writerow([row, f"the {generator.choice(TOPICS[topic])}, again, said number {row}", topic])
    return path


def write_pairs(path: Path, rows: int) -> Path:
    """JSON lines of sentence pairs with a similarity score (a regression task)."""
    generator = random.Random(len(path.name))
    lines = []
    for row in range(rows):
        first = f"the {generator.choice(['cat', 'dog', 'bird'])} sat on mat {row}"
        same = row % 2 == 0
        lines.append(
            json.dumps(
                {
                    "a": first,
                    "b": first if same else f"prices rose by {row} percent",
                    "score": 4.5 - row % 4 if same else 0.5 * (row % 3),
                }
            )
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def train(tiny_backbone: str, out: Path, *options: str) -> int:
    common = [
        "--backbone",
        tiny_backbone,
        "--out",
        str(out),
        "--batch-size",
        "8",
        "--lora-rank",
        "4",
        "--no-bf16",
        "--quiet",
        "--max-steps",
        "2",
    ]
    return train_module.main([*options, *common])


@pytest.fixture(scope="module")
def topics(tiny_backbone, tmp_path_factory) -> Path:
    """A topics CSV and, beside it, runs/topics/{full,deebert} trained on it for a few steps."""
    folder = tmp_path_factory.mktemp("topics")
    data = [
        "--train-file",
        str(write_topics(folder / "topics.csv")),
        "--text-column",
        "headline",
        "--label-column",
        "topic",
    ]
    assert train(tiny_backbone, folder / "runs" / "topics" / "full", "--method", "full", *data) == 0
    full = str(folder / "runs" / "topics" / "full")
    assert (
        train(tiny_backbone, folder / "runs" / "topics" / "deebert", "--method", "deebert", "--init", full, *data) == 0
    )
    return folder


@pytest.fixture(scope="module")
def similarity(tiny_backbone, tmp_path_factory) -> Path:
    """JSON-lines sentence pairs with scores, a dev file of its own, and full and PABEE models trained on them."""
    folder = tmp_path_factory.mktemp("similarity")
    data = [
        "--train-file",
        str(write_pairs(folder / "similarity.jsonl", 40)),
        "--dev-file",
        str(write_pairs(folder / "dev.jsonl", 8)),
    ]
    data += ["--text-column", "a", "--pair-column", "b", "--label-column", "score", "--regression"]
    assert train(tiny_backbone, folder / "full", "--method", "full", *data) == 0
    assert train(tiny_backbone, folder / "pabee", "--method", "pabee", "--init", str(folder / "full"), *data) == 0
    return folder


def predicted(capsys, *options: str) -> list[dict]:
    capsys.readouterr()
    assert predict.main(["--json", *options]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_a_csv_of_three_string_classes_trains_predicts_and_calibrates(topics, capsys):
    full, deebert = topics / "runs" / "topics" / "full", topics / "runs" / "topics" / "deebert"
    config = read_config(full)
    assert (config.task, config.labels, config.pair) == ("topics", ["politics", "science", "sports"], False)
    data = config.training["data"]
    assert (
        data["source"]["train_file"] == str((topics / "topics.csv").resolve())
        and data["source"]["text_column"] == "headline"
    )
    assert (
        data["train_rows"] == TOPIC_ROWS and data["dev_carved"]["rows"] == 6
    )  # no --dev-file: dev rows held out of the file, recorded
    assert (
        config.training["validation_split"]["of"] == TOPIC_ROWS - 6
        and config.training["train_rows"] == TOPIC_ROWS - 6 - 5
    )
    assert config.metrics["metric_name"] == "accuracy" and config.metrics["examples"] == 6

    validation, dev, fit = (checkpoint_split(config, split) for split in ("validation", "dev", "fit"))
    assert (len(validation), len(dev), len(fit)) == (5, 6, TOPIC_ROWS - 11)
    assert not {*validation["text"]} & {*dev["text"]} and not {*fit["text"]} & ({*validation["text"]} | {*dev["text"]})

    [trace] = predicted(capsys, "--checkpoint", str(deebert), "--text", "the senate passed a law")
    assert (
        trace["task"] == "topics"
        and trace["prediction"] in config.labels
        and list(trace["probabilities"]) == config.labels
    )

    assert calibration.main(["--checkpoint", str(deebert), "--reference", str(full), "--write"]) == 0
    assert "validation: accuracy" in capsys.readouterr().out
    calibrated = read_config(deebert)
    assert (
        calibrated.operating_point["chosen_on"] == "validation"
        and calibrated.operating_point["validation_split"]["rows"] == 5
    )
    assert calibrated.threshold is not None and calibrated.metrics["examples"] == 6
    assert set(calibrated.operating_point["precisions"]) == {"int8", "onnx-fp32", "onnx-int8"}
    assert calibration.main(["--checkpoint", str(full), "--reference", str(full), "--only-precisions", "--write"]) == 0
    assert "answered as fp32 answers" in capsys.readouterr().out
    assert set(read_config(full).operating_point["precisions"]) == {"int8", "onnx-fp32", "onnx-int8"}


def test_json_lines_of_scored_sentence_pairs_train_predict_and_calibrate(similarity, capsys):
    config = read_config(similarity / "full")
    assert (config.task, config.labels, config.pair) == ("similarity", None, True)
    assert (
        config.training["data"]["dev_carved"] is None
        and config.metrics["metric_name"] == "pearson"
        and config.metrics["examples"] == 8
    )
    [trace] = predicted(
        capsys, "--checkpoint", str(similarity / "pabee"), "--text", "the cat sat", "--text-pair", "a cat was sitting"
    )
    assert isinstance(trace["prediction"], float) and trace["probabilities"] == {}
    assert predict.main(["--checkpoint", str(similarity / "pabee"), "--text", "the cat sat"]) == 2
    assert "takes a sentence pair" in capsys.readouterr().err
    assert (
        predict.main(["--checkpoint", str(similarity / "full"), "--text", "the cat sat", "--text-pair", "a cat"]) == 0
    )
    assert "score " in capsys.readouterr().out
    assert (
        calibration.main(
            ["--checkpoint", str(similarity / "pabee"), "--reference", str(similarity / "full"), "--write"]
        )
        == 0
    )
    assert read_config(similarity / "pabee").operating_point["validation"]["metric_name"] == "pearson"


def test_a_local_datasets_folder_trains_with_its_validation_split_as_dev_and_its_class_names(
    tiny_backbone, tmp_path, monkeypatch
):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "weather"
    folder.mkdir()
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["sun", "rain"])}
    )
    rows = {
        "text": [f"story {row} about {'rain' if row % 2 else 'sun'}" for row in range(30)],
        "label": [row % 2 for row in range(30)],
    }
    whole = datasets.Dataset.from_dict(rows, features=features)
    whole.select(range(24)).to_parquet(folder / "train.parquet")
    whole.select(range(24, 30)).to_parquet(folder / "validation.parquet")
    assert train(tiny_backbone, tmp_path / "run", "--method", "full", "--dataset", str(folder)) == 0
    config = read_config(tmp_path / "run")
    assert (config.task, config.labels) == ("weather", ["sun", "rain"]) and config.training["data"]["source"][
        "dataset"
    ] == str(folder)
    assert config.metrics["examples"] == 6 and config.training["data"]["dev_carved"] is None
    validation, fit = checkpoint_split(config, "validation"), checkpoint_split(config, "fit")
    assert (len(validation), len(fit)) == (2, 22) and not {*validation["text"]} & {*fit["text"]}


def test_the_catalog_lists_tasks_and_methods_from_their_configs(topics, similarity):
    catalog = read_catalog(topics / "runs")
    assert list(catalog) == ["topics"] and catalog["topics"].methods == ["full", "deebert"]
    assert catalog["topics"].spec.labels == ("politics", "science", "sports") and not catalog["topics"].spec.pair
    assert load_checkpoint(catalog["topics"].checkpoints["deebert"]).config.task == "topics"


def test_benchmark_and_report_accept_a_task_of_ones_own(topics, tmp_path, capsys):
    out = tmp_path / "bench"
    options = [
        "--checkpoints",
        str(topics / "runs" / "topics"),
        "--precisions",
        "fp32",
        "--batch-sizes",
        "1",
        "--no-onnxruntime",
    ]
    assert (
        benchmark.main(
            ["--task", "topics", *options, "--limit", "2", "--repeats", "1", "--warmup", "1", "--out", str(out)]
        )
        == 0
    )
    assert "topics" in (out / "results.md").read_text()

    model = load_checkpoint(topics / "runs" / "topics" / "deebert")
    log = QueryLog(tmp_path / "q.db")
    for trace in model.predict(["a goal for the team", "the lab found a gene"]):
        log.record("topics", trace.text, None, {}, [trace], {})
    log.close()
    assert report_main(["--db", str(tmp_path / "q.db"), "--out", str(tmp_path / "report"), "--task", "topics"]) == 0
    assert {row["task"] for row in json.loads((tmp_path / "report" / JSON_FILE).read_text())} == {"topics"}


def test_classes_come_in_a_stable_order():
    assert discover_classes(Table("t", {"label": ["10", "2", "1", "2"]}), "label") == [
        "1",
        "2",
        "10",
    ]  # whole numbers by value
    assert discover_classes(Table("t", {"label": ["b", "a", "c", "a"]}), "label") == ["a", "b", "c"]
    assert discover_classes(Table("t", {"label": [1, 0, 1.0]}), "label") == ["0", "1"]  # JSON numbers
    assert discover_classes(Table("t", {"label": [0, 1]}, classes={"label": ["pos", "neg"]}), "label") == [
        "pos",
        "neg",
    ]  # a ClassLabel's order


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


BAD_FILES = {
    "missing column": (
        "data.csv",
        "sentence,topic\na,x\n",
        [],
        "has no column 'headline' (--text-column); its columns: sentence, topic",
    ),
    "empty file": ("data.csv", "", [], "is empty"),
    "header only": ("data.tsv", "headline\ttopic\n", [], "has a header but no rows"),
    "score that is no number": (
        "data.csv",
        "headline,topic\n" + "a,1.5\n" * 11 + "b,high\n",
        ["--regression"],
        "row 12: label 'high'",
    ),
    "one class": (
        "data.jsonl",
        '{"headline": "a", "topic": "x"}\n' * 12,
        [],
        "holds only the class 'x'; a classifier needs at least two",
    ),
    "scores without --regression": (
        "data.csv",
        "headline,topic\n" + "a,0.5\nb,2\n" * 6,
        [],
        "pass --regression to learn a score",
    ),
    "same score everywhere": ("data.csv", "headline,topic\n" + "a,2.5\n" * 12, ["--regression"], "nothing to learn"),
    "empty text": (
        "data.csv",
        "headline,topic\n" + "a,x\nb,y\n" * 6 + " ,x\n",
        [],
        "row 13: column 'headline' (--text-column) is empty",
    ),
    "unknown format": ("data.xlsx", "headline,topic\n", [], "cannot tell the format from '.xlsx'"),
    "too few rows": ("data.csv", "headline,topic\na,x\nb,y\n", [], "2 row(s); training needs at least 10"),
    "GLUE name": (
        "sst2.csv",
        "headline,topic\n" + "a,x\nb,y\n" * 6,
        [],
        "task name 'sst2' (the default, from the data's name) is a GLUE task's",
    ),
    "ragged row": ("data.csv", "headline,topic\na,x\nb,y,z\n", [], "row 2: 3 fields but the header has 2"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_bad_data_gets_one_line_and_writes_nothing(case, tiny_backbone, tmp_path, capsys):
    name, text, extra, expected = BAD_FILES[case]
    data = write(tmp_path / name, text)
    out = tmp_path / "run"
    assert (
        train(
            tiny_backbone,
            out,
            "--method",
            "full",
            "--train-file",
            str(data),
            "--text-column",
            "headline",
            "--label-column",
            "topic",
            *extra,
        )
        == 2
    )
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and expected in error, error
    assert not out.exists() and sorted(path.name for path in tmp_path.iterdir()) == [name]


def test_a_dev_label_unseen_in_training_and_options_that_do_not_fit_are_refused(tiny_backbone, tmp_path, capsys):
    train_file = write_topics(tmp_path / "topics.csv", rows=12)
    dev_file = write(tmp_path / "dev.csv", "id,headline,topic\n1,a new planet,astronomy\n")
    data = ["--train-file", str(train_file), "--text-column", "headline", "--label-column", "topic"]
    assert train(tiny_backbone, tmp_path / "run", "--method", "full", *data, "--dev-file", str(dev_file)) == 2
    assert (
        "row 1: label 'astronomy' is not one of the training rows' classes politics, science, sports"
        in capsys.readouterr().err
    )
    assert (
        train(tiny_backbone, tmp_path / "run", "--method", "full", "--task", "MRPC", "--text-column", "headline") == 2
    )
    assert "--text-column cannot go with --task" in capsys.readouterr().err
    assert train(tiny_backbone, tmp_path / "run", "--method", "full", *data, "--dataset-config", "x") == 2
    assert "--dataset-config cannot go with --train-file" in capsys.readouterr().err
    assert train(tiny_backbone, tmp_path / "run", "--method", "full", *data, "--from-hub") == 2
    assert "--from-hub cannot go with --train-file" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_later_stage_refuses_rows_with_other_classes_than_its_init(topics, tiny_backbone, tmp_path, capsys):
    other = write(tmp_path / "topics.csv", "headline,topic\n" + "a goal,sports\nthe vote,politics\n" * 6)
    init = str(topics / "runs" / "topics" / "full")
    options = [
        "--method",
        "deebert",
        "--init",
        init,
        "--train-file",
        str(other),
        "--text-column",
        "headline",
        "--label-column",
        "topic",
    ]
    assert train(tiny_backbone, tmp_path / "run", *options) == 2
    assert (
        "was trained on the labels ['politics', 'science', 'sports'], but these rows have ['politics', 'sports']"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "run").exists()


def test_calibration_refuses_a_training_file_that_changed_since(topics, tmp_path, capsys):
    full = read_config(topics / "runs" / "topics" / "full")
    full.training["data"]["source"]["train_file"] = str(write_topics(tmp_path / "topics.csv", rows=TOPIC_ROWS + 1))
    with pytest.raises(UserError, match="changed since the checkpoint was trained"):
        checkpoint_split(full, "validation")
