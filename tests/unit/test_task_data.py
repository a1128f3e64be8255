"""No silent data: generated data is written only under `data.generate_dir`; any other missing data
path is an error that names it (`rrm_ray.data.tasks.ensure_data_files`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rrm_ray.config import ConfigError
from rrm_ray.data.tasks import DataPathError, ensure_data_files, load_task_rows
from rrm_ray.validation import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_typo_in_train_path_is_an_error_not_generated_data(tmp_path, monkeypatch):
    # The example: quickstart generates the arithmetic task, the user mistypes the path.
    monkeypatch.chdir(tmp_path)
    typo = tmp_path / "does" / "not" / "exist.jsonl"
    cfg = load_config(CONFIGS / "quickstart.yaml", [f"data.train_path={typo}"])
    with pytest.raises(DataPathError) as e:
        ensure_data_files(cfg)
    msg = str(e.value)
    assert msg.startswith(f"data.train_path: {typo} does not exist")
    assert "data.generate_dir=data/arithmetic" in msg and f"data.generate_dir={typo.parent}" in msg
    assert isinstance(e.value, ConfigError)  # `rrm-ray train` prints it as a config error, exit 2
    assert not (tmp_path / "does").exists() and not (tmp_path / "data").exists()  # nothing written


def test_quickstart_generates_its_task_where_configured(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(CONFIGS / "quickstart.yaml")
    counts = ensure_data_files(cfg)
    train, held = tmp_path / "data/arithmetic/train.jsonl", tmp_path / "data/arithmetic/eval.jsonl"
    # operands 1..12: 78 distinct sums, a quarter (19) held out
    assert counts == {"generated_rows/train.jsonl": 59, "generated_rows/eval.jsonl": 19}
    assert len(_lines(train)) == 59 and len(_lines(held)) == 19
    seen = {r["expression"] for r in _lines(train)}
    assert not seen & {r["expression"] for r in _lines(held)}
    assert ensure_data_files(cfg) == {}  # second run: read as they are
    rows, held_rows, counts = load_task_rows(cfg, tokenizer=None)
    assert len(rows) == 59 and len(held_rows) == 19 and counts == {}


def test_nothing_is_generated_without_generate_dir(tmp_path):
    missing = tmp_path / "train.jsonl"
    cfg = load_config(None, [f"data.train_path={missing}", "data.eval_path=null"])
    assert cfg.data.generate_dir is None  # the default: never generate
    with pytest.raises(DataPathError, match="nothing is generated") as e:
        ensure_data_files(cfg)
    assert f"data.train_path: {missing} does not exist" in str(e.value)
    assert f"data.generate_dir={tmp_path}" in str(e.value) and not missing.exists()


def test_missing_eval_path_outside_generate_dir_is_named(tmp_path):
    gen = tmp_path / "gen"
    cfg = load_config(
        None,
        [
            f"data.generate_dir={gen}",
            f"data.train_path={gen / 'train.jsonl'}",
            f"data.eval_path={tmp_path / 'e.jsonl'}",
        ],
    )
    with pytest.raises(DataPathError, match=r"^data\.eval_path: .*e\.jsonl does not exist"):
        ensure_data_files(cfg)
    assert not gen.exists()  # checked before anything is written


def test_an_existing_file_outside_is_read_and_only_missing_owned_paths_are_written(tmp_path):
    own = tmp_path / "mine.jsonl"
    own.write_text(json.dumps({"prompt": "What is 1 + 1?", "answer": "2"}) + "\n")
    gen = tmp_path / "gen"
    cfg = load_config(
        None, [f"data.generate_dir={gen}", f"data.train_path={own}", f"data.eval_path={gen / 'eval.jsonl'}"]
    )
    assert ensure_data_files(cfg) == {"generated_rows/eval.jsonl": 11}  # 1..9: 45 sums, a quarter held out
    assert len(own.read_text().splitlines()) == 1  # the user's file is untouched
    train, held, _ = load_task_rows(cfg, tokenizer=None)
    assert [r.answer for r in train] == ["2"] and len(held) == 11


def test_synthetic_pairs_are_written_under_generate_dir(tmp_path):
    gen = tmp_path / "pairs"
    cfg = load_config(
        CONFIGS / "train_rrm_cpu.yaml",
        [
            f"data.generate_dir={gen}",
            f"data.train_path={gen / 'train.jsonl'}",
            f"data.eval_path={gen / 'eval.jsonl'}",
            "data.synthetic_pairs=8",
        ],
    )
    assert ensure_data_files(cfg) == {"generated_rows/train.jsonl": 8, "generated_rows/eval.jsonl": 2}
    assert {"prompt", "chosen", "rejected"} <= set(_lines(gen / "train.jsonl")[0])


def test_preference_with_no_pairs_to_generate_is_an_error(tmp_path):
    cfg = load_config(
        CONFIGS / "train_rrm_cpu.yaml",
        [
            f"data.generate_dir={tmp_path}",
            f"data.train_path={tmp_path / 't.jsonl'}",
            "data.synthetic_pairs=0",
        ],
    )
    with pytest.raises(DataPathError, match=r"data\.synthetic_pairs is 0"):
        ensure_data_files(cfg)


def test_a_folder_is_not_a_data_file(tmp_path):
    cfg = load_config(None, [f"data.train_path={tmp_path}", f"data.generate_dir={tmp_path.parent}"])
    with pytest.raises(DataPathError, match="is a folder"):
        ensure_data_files(cfg)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (
            ["data.generate_arithmetic=true"],
            "'data.generate_arithmetic' in a command-line override was replaced: set data.generate_dir",
        ),
        (["data.format=preference", "reward.rule=judge_rrm", "data.synthetic_pairs=8"], "data.generate_dir"),
        (["data.synthetic_pairs=8", "data.generate_dir=x"], "data.format=preference"),
        (["data.synthetic_pairs=-1"], "data.synthetic_pairs: must be >= 0"),
        (["data.generate_dir=' '"], "data.generate_dir: must be null (generate nothing) or a folder"),
    ],
)
def test_generation_keys_are_validated(overrides, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(None, overrides)


def test_prompt_stream_keeps_a_pairs_two_orders_together_and_resumes():
    from rrm_ray.data.prompts import PromptRow
    from rrm_ray.jobs.common import PromptStream

    rows = [PromptRow(f"pair{i // 2} order{i % 2}", str(1 + i % 2), i // 2, {}) for i in range(8)]
    stream = PromptStream(rows, batch=3, shuffle=True, seed=5, unit=2)
    first = stream.next() + stream.next()  # 6 units: one epoch (4 pairs) and 2 of the next
    assert len(first) == 12
    for a, b in zip(first[::2], first[1::2], strict=True):
        assert a.row == b.row and (a.prompt.endswith("order0") and b.prompt.endswith("order1"))
    assert sorted(r.row for r in first[:8:2]) == [0, 1, 2, 3]  # an epoch shows every pair once
    again = PromptStream(rows, batch=3, shuffle=True, seed=5, unit=2)
    again.position = 3
    assert again.next() == first[6:]
    with pytest.raises(ValueError, match="units of 2"):
        PromptStream(rows[:3], batch=1, shuffle=False, seed=0, unit=2)
