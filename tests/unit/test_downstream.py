"""Downstream-eval data: MMLU-Pro / GPQA rows checked with errors naming file, row, key and expectation,
GPQA options shuffled reproducibly, lm-eval task folders that lm-eval itself loads, the config keys."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from rrm_ray.config import ConfigError
from rrm_ray.data.downstream import (
    OFFLINE_ENV,
    DownstreamDataError,
    gpqa_option_order,
    lm_eval_task_name,
    metric_names,
    parse_task_list,
    read_task,
    task_format,
    write_task_dir,
)
from rrm_ray.validation import load_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "downstream"
MMLU_PRO = FIXTURES / "mmlu_pro_sample.jsonl"
GPQA = FIXTURES / "gpqa_sample.jsonl"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def mmlu_row(**change) -> dict:
    row = {"question": "2 + 2 =", "options": ["3", "4", "5", "6"], "answer": "B", "answer_index": 1}
    return {**row, "category": "math", **change}


def gpqa_row(**change) -> dict:
    row = {"Question": "Which is a noble gas?", "Correct Answer": "Neon", "Incorrect Answer 1": "Iron"}
    return {**row, "Incorrect Answer 2": "Sodium", "Incorrect Answer 3": "Carbon", **change}


def test_the_fixture_files_read_as_their_formats():
    mmlu = read_task("mmlu_pro", MMLU_PRO)
    rows = [json.loads(line) for line in MMLU_PRO.read_text().splitlines()]
    assert len(mmlu.questions) == mmlu.rows_in_file == 12 and mmlu.format == "mmlu_pro"
    assert {len(q.options) for q in mmlu.questions} >= {4, 10}
    assert len({q.category for q in mmlu.questions}) >= 3
    for q, row in zip(mmlu.questions, rows, strict=True):
        assert q.options[q.gold] == row["options"][row["answer_index"]]
    gpqa = read_task("gpqa", GPQA)
    rows = [json.loads(line) for line in GPQA.read_text().splitlines()]
    assert len(gpqa.questions) == 8
    for q, row in zip(gpqa.questions, rows, strict=True):
        assert q.options[q.gold] == row["Correct Answer"]
        assert sorted(q.options) == sorted(
            row[k] for k in ("Correct Answer", *[f"Incorrect Answer {i}" for i in (1, 2, 3)])
        )
    assert len({q.gold for q in gpqa.questions}) > 1  # the correct answer is not always first


def test_gpqa_order_depends_on_the_seed_and_the_question_only(tmp_path):
    rows = [json.loads(line) for line in GPQA.read_text().splitlines()]
    reversed_file = write_jsonl(tmp_path / "reversed.jsonl", rows[::-1])
    forward = {q.question: q for q in read_task("gpqa", GPQA).questions}
    backward = {q.question: q for q in read_task("gpqa", reversed_file).questions}
    assert forward == backward
    assert sorted(gpqa_option_order(0, "q")) == [0, 1, 2, 3]
    assert any(gpqa_option_order(0, f"q{i}") != gpqa_option_order(1, f"q{i}") for i in range(8))
    assert read_task("gpqa", GPQA, limit=3).questions == read_task("gpqa", GPQA).questions[:3]


def test_gpqa_csv_with_multiline_cells_and_padded_answers(tmp_path):
    path = tmp_path / "gpqa_main.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*gpqa_row(), "Subdomain"])
        writer.writeheader()
        writer.writerow(
            {**gpqa_row(Question="Line one\nline two?", **{"Correct Answer": " Neon\n"}), "Subdomain": "Chem"}
        )
        writer.writerow({**gpqa_row(), "Subdomain": "Chem"})
    task = read_task("gpqa_main", path)
    first = task.questions[0]
    assert task.rows_in_file == 2 and first.question == "Line one\nline two?"
    assert first.options[first.gold] == "Neon" and first.category == "Chem"


def test_mmlu_pro_na_padding_is_dropped_and_counted(tmp_path):
    row = mmlu_row(options=["3", "4", "5", "N/A", "6", "N/A"], answer="E", answer_index=4)
    task = read_task("mmlu_pro", write_jsonl(tmp_path / "m.jsonl", [row, mmlu_row()]))
    q = task.questions[0]
    assert q.options == ("3", "4", "5", "6") and q.options[q.gold] == "6" and task.padding_dropped == 2


@pytest.mark.parametrize(
    ("row", "key", "expected"),
    [
        ({k: v for k, v in mmlu_row().items() if k != "question"}, "question", "missing"),
        (mmlu_row(question=""), "question", "expected a non-empty string"),
        (mmlu_row(options="3, 4"), "options", "expected a list of 2 to 10 non-empty strings"),
        (mmlu_row(options=[str(i) for i in range(11)]), "options", "2 to 10"),
        (mmlu_row(options=["3", 4]), "options", "non-empty strings"),
        (mmlu_row(answer_index=4), "answer_index", "expected an integer in [0, 3]"),
        (mmlu_row(answer_index=True), "answer_index", "an integer"),
        (mmlu_row(answer="C"), "answer", "expected 'B', the letter of answer_index=1"),
        (mmlu_row(options=["3", "N/A", "5"]), "options", "a real option at answer_index=1"),
        (mmlu_row(category=None), "category", "a non-empty string"),
    ],
)
def test_a_bad_mmlu_pro_row_names_file_row_key_and_expectation(tmp_path, row, key, expected):
    path = write_jsonl(tmp_path / "mmlu.jsonl", [mmlu_row(), row])
    with pytest.raises(DownstreamDataError) as info:
        read_task("mmlu_pro", path)
    assert f"{path}: row 2: key {key!r}: " in str(info.value) and expected in str(info.value)


@pytest.mark.parametrize(
    ("row", "key", "expected"),
    [
        ({k: v for k, v in gpqa_row().items() if k != "Incorrect Answer 2"}, "Incorrect Answer 2", "missing"),
        (gpqa_row(Question="  "), "Question", "a non-empty string"),
        (gpqa_row(**{"Correct Answer": 7}), "Correct Answer", "a non-empty string, got 7"),
    ],
)
def test_a_bad_gpqa_row_names_file_row_key_and_expectation(tmp_path, row, key, expected):
    path = write_jsonl(tmp_path / "gpqa.jsonl", [gpqa_row(), gpqa_row(), row])
    with pytest.raises(DownstreamDataError) as info:
        read_task("gpqa", path)
    assert f"{path}: row 3: key {key!r}: " in str(info.value) and expected in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(DownstreamDataError, match="no such file"):
        read_task("gpqa", tmp_path / "missing.csv")
    (tmp_path / "m.csv").write_text("question\nx\n")
    with pytest.raises(DownstreamDataError, match="the mmlu_pro format is read from "):
        read_task("mmlu_pro", tmp_path / "m.csv")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DownstreamDataError, match="no rows"):
        read_task("mmlu_pro", tmp_path / "empty.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"question": \n')
    with pytest.raises(DownstreamDataError, match=r"row 1.*invalid JSON"):
        read_task("mmlu_pro", tmp_path / "broken.jsonl")


def test_task_names_and_the_tasks_option():
    assert [task_format(n) for n in ("mmlu_pro", "mmlu_pro_math", "gpqa", "gpqa_diamond")] == [
        "mmlu_pro",
        "mmlu_pro",
        "gpqa",
        "gpqa",
    ]
    for bad in ("mmlu", "gpqadiamond", "GPQA", "gpqa-diamond", ""):
        with pytest.raises(ConfigError, match="names no format"):
            task_format(bad)
    assert parse_task_list("mmlu_pro=a.jsonl, gpqa=b.csv") == {"mmlu_pro": "a.jsonl", "gpqa": "b.csv"}
    for bad, message in (
        ("mmlu_pro", "is not NAME=FILE"),
        ("gpqa=a,gpqa=b", "named twice"),
        ("", "no task given"),
        ("mmlu=a", "--tasks: task name 'mmlu' names no format"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_task_list(bad)


def test_config_keys_are_checked_up_front():
    for overrides, message in (
        (["trainer.downstream_eval.enabled=true"], "needs at least one task"),
        (["trainer.downstream_eval.tasks.mmlu=x.jsonl"], "task name 'mmlu' names no format"),
        (["trainer.downstream_eval.limit=0"], "limit: must be null"),
        (["trainer.downstream_eval.batch_size=0"], "batch_size: must be at least 1"),
        (["trainer.downstream_eval.num_fewshot=-1"], "num_fewshot: must be >= 0"),
        (["trainer.downstream_eval.colour=red"], "unknown config key 'trainer.downstream_eval.colour'"),
        (
            [
                "trainer.downstream_eval.enabled=true",
                "trainer.downstream_eval.tasks.gpqa=g.csv",
                "checkpoint.save_final=false",
            ],
            "needs checkpoint.save_final=true",
        ),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(None, overrides)
    cfg = load_config(None, ["trainer.downstream_eval.tasks.gpqa_diamond=d.csv"])
    assert cfg.trainer.downstream_eval.tasks == {"gpqa_diamond": "d.csv"}


def test_on_a_declared_cluster_the_evaluation_needs_a_free_gpu():
    cuda = ["cluster.device=cuda", "cluster.num_nodes=1", "rollout.num_engines=1", "learner.num_ranks=2"]
    enabled = ["trainer.downstream_eval.enabled=true", "trainer.downstream_eval.tasks.gpqa=g.csv"]
    with pytest.raises(ConfigError, match="asks for 3 of the declared cluster's 3 GPUs; leave one free"):
        load_config(None, [*cuda, "cluster.gpus_per_node=3", *enabled])
    load_config(None, [*cuda, "cluster.gpus_per_node=4", *enabled])


def test_metric_names_before_and_after():
    results = {"gpqa": {"acc": 0.5, "acc_stderr": None, "n": 2.0}}
    assert metric_names(results) == {"downstream/gpqa/acc": 0.5, "downstream/gpqa/n": 2.0}
    assert metric_names(results, "before") == {
        "downstream/gpqa/acc": 0.5,
        "downstream/gpqa/n": 2.0,
        "downstream_before/gpqa/acc": 0.5,
        "downstream_before/gpqa/n": 2.0,
    }


def test_the_task_folder_is_an_lm_eval_task_over_the_local_file(tmp_path, monkeypatch):
    """lm-eval's own TaskManager indexes the generated YAML and builds each document's prompt, choices
    and gold index from the local JSONL (offline: the json builder reads the file, nothing else)."""
    tasks = {"mmlu_pro": read_task("mmlu_pro", MMLU_PRO, limit=5), "gpqa_x": read_task("gpqa_x", GPQA)}
    folder = write_task_dir(tasks, tmp_path / "tasks")
    config = yaml.safe_load((folder / "gpqa_x.yaml").read_text())
    assert config["dataset_path"] == "json" and config["output_type"] == "multiple_choice"
    assert config["dataset_kwargs"]["data_files"] == {"test": str(folder / "gpqa_x.jsonl")}
    assert [m["metric"] for m in config["metric_list"]] == ["acc", "acc_norm"]
    assert len((folder / "mmlu_pro.jsonl").read_text().splitlines()) == 5

    for name, value in OFFLINE_ENV.items():
        monkeypatch.setenv(name, value)
    from lm_eval.tasks import TaskManager

    loaded = TaskManager(include_path=str(folder), include_defaults=False).load(
        [lm_eval_task_name("mmlu_pro"), lm_eval_task_name("gpqa_x")]
    )["tasks"]
    mmlu = loaded[lm_eval_task_name("mmlu_pro")]
    docs = list(mmlu.test_docs())
    first = tasks["mmlu_pro"].questions[0]
    assert len(docs) == 5
    prompt = mmlu.doc_to_text(docs[0])
    assert prompt.startswith(f"The following is a multiple choice question about {first.category}.")
    assert "\nA. 54\nB. 56\nC. 58\nD. 64\nAnswer:" in prompt
    assert mmlu.doc_to_choice(docs[0]) == ["A", "B", "C", "D"] and mmlu.doc_to_target(docs[0]) == first.gold
    gpqa = loaded[lm_eval_task_name("gpqa_x")]
    doc = next(iter(gpqa.test_docs()))
    q = tasks["gpqa_x"].questions[0]
    assert gpqa.doc_to_choice(doc) == ["(A)", "(B)", "(C)", "(D)"] and gpqa.doc_to_target(doc) == q.gold
    assert f"({'ABCD'[q.gold]}) {q.options[q.gold]}\n" in gpqa.doc_to_text(doc)


def test_mmlu_pro_parquet_is_read_as_published(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in MMLU_PRO.read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test-00000-of-00001.parquet")
    task = read_task("mmlu_pro", tmp_path / "test-00000-of-00001.parquet")
    assert task.questions == read_task("mmlu_pro", MMLU_PRO).questions


def test_train_checks_the_downstream_files_before_anything_starts(tmp_path, capsys):
    from rrm_ray.cli import main

    bad = write_jsonl(tmp_path / "mmlu.jsonl", [mmlu_row(), mmlu_row(answer="C")])
    on = ["configs/quickstart.yaml", "trainer.downstream_eval.enabled=true"]
    assert main(["train", *on, f"trainer.downstream_eval.tasks.gpqa={tmp_path / 'gpqa.csv'}"]) == 2
    assert (
        f"trainer.downstream_eval.tasks.gpqa: {tmp_path / 'gpqa.csv'}: no such file"
        in capsys.readouterr().err
    )
    assert main(["train", *on, f"trainer.downstream_eval.tasks.mmlu_pro={bad}"]) == 2
    assert f"mmlu_pro: {bad}: row 2: key 'answer': expected 'B'" in capsys.readouterr().err
