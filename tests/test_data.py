"""Dataset loading: the embedded task, the real GSM8K / MATH files, and bad input."""

from __future__ import annotations

import json

import pytest

from east.answers import answers_equal
from east.data import DataError, load_splits
from east.data.arith import ArithSpec, generate

from .test_config import _compose


def _dataset_cfg(name, **overrides):
    from omegaconf import OmegaConf

    cfg = _compose([f"dataset={name}"] + [f"dataset.{k}={v}" for k, v in overrides.items()])
    return OmegaConf.to_container(cfg.dataset, resolve=True)


def test_arith_is_deterministic_disjoint_and_gsm8k_formatted():
    spec = ArithSpec(warmup_size=300, train_size=50, test_size=50)
    a, b = generate(spec), generate(spec)
    assert a == b
    questions = [{p.question for p in a[s]} for s in ("warmup", "train", "test")]
    assert sum(map(len, questions)) == 400 and len(set().union(*questions)) == 400
    p = a["train"][0]
    assert p.solution.rsplit("\n", 1)[1] == f"#### {p.gold}"
    assert generate(ArithSpec(seed=1, train_size=5, test_size=5, warmup_size=5)) != generate(
        ArithSpec(seed=2, train_size=5, test_size=5, warmup_size=5)
    )
    with pytest.raises(ValueError, match="only .* distinct problems"):
        generate(ArithSpec(steps=1, max_number=2, warmup_size=20_000))


def test_real_gsm8k_counts_and_golds(shared_data):
    splits = load_splits(_dataset_cfg("gsm8k", path=shared_data / "gsm8k"))
    assert len(splits.train) == 7473 and len(splits.tests["gsm8k"]) == 1319
    assert all(p.gold.lstrip("-").replace(".", "").isdigit() for p in splits.tests["gsm8k"])
    assert splits.tests["gsm8k"][0].gold == "18"


def test_real_math_counts_and_golds(shared_data):
    splits = load_splits(_dataset_cfg("math", path=shared_data / "math", test_sets="[math,math500]"))
    assert len(splits.train) == 7498 and len(splits.tests["math"]) == 5000
    assert splits.skipped["train"] == {"MATH solution has no brace-matched \\boxed{}": 2}
    m500 = splits.tests["math500"]
    assert len(m500) == 500
    # MATH500's answer field agrees with the boxed answer of the same problem in MATH test.
    by_question = {p.question: p.gold for p in splits.tests["math"]}
    agree = sum(answers_equal(by_question[p.question], p.gold) for p in m500 if p.question in by_question)
    assert agree >= 495


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"question": "q", "answer": "#### 1"}', "{not json"], r"train.jsonl:2: malformed JSON"),
        (
            ['{"question": "q", "answer": "#### 1"}', '{"answer": "#### 2"}'],
            r"train.jsonl:2: missing field 'question'",
        ),
        (
            ['{"question": "q", "answer": "no marker"}'],
            r"train.jsonl:1: GSM8K solution has no '#### <answer>'",
        ),
        (['["a list"]'], r"train.jsonl:1: expected a JSON object"),
        ([""], r"train.jsonl: the file is empty"),
    ],
)
def test_bad_files_name_the_file_and_line(tmp_path, lines, message):
    _write(tmp_path / "train.jsonl", lines)
    _write(tmp_path / "test.jsonl", ['{"question": "q", "answer": "#### 1"}'])
    with pytest.raises(DataError, match=message):
        load_splits(_dataset_cfg("gsm8k", path=tmp_path))


def test_skip_mode_counts_bad_rows(tmp_path, caplog):
    rows = [
        '{"question": "q1", "answer": "#### 1"}',
        "{bad",
        '{"answer": "#### 2"}',
        '{"question": "q3", "answer": "#### 3"}',
    ]
    _write(tmp_path / "train.jsonl", rows)
    _write(tmp_path / "test.jsonl", ['{"question": "q", "answer": "#### 1"}'])
    with pytest.raises(DataError, match="malformed JSON"):  # malformed JSON is never skipped
        load_splits(_dataset_cfg("gsm8k", path=tmp_path, on_bad_row="skip"))
    _write(tmp_path / "train.jsonl", [r for r in rows if r != "{bad"])
    splits = load_splits(_dataset_cfg("gsm8k", path=tmp_path, on_bad_row="skip"))
    assert [p.gold for p in splits.train] == ["1", "3"]
    assert splits.skipped["train"] == {"missing field 'question'": 1}
    assert "skipped 1 bad rows" in caplog.text


def test_bring_your_own_jsonl(tmp_path):
    _write(tmp_path / "train.jsonl", [json.dumps({"prompt": f"q{i}", "final": str(i)}) for i in range(3)])
    _write(tmp_path / "test.jsonl", [json.dumps({"prompt": "t", "final": r"\frac12"})])
    splits = load_splits(_dataset_cfg("jsonl", path=tmp_path, question_field="prompt", answer_field="final"))
    assert [p.gold for p in splits.train] == ["0", "1", "2"]
    assert splits.tests["test"][0].gold == r"\frac12"
    with pytest.raises(ValueError, match="unknown test set"):
        load_splits(
            _dataset_cfg(
                "jsonl", path=tmp_path, test_sets="[nope]", question_field="prompt", answer_field="final"
            )
        )
