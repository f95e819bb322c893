"""Dataset loading: the embedded task, the real GSM8K / MATH files, and bad input."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from east.data import DataError, load_splits
from east.data.arith import (
    ArithConfig,
    chain_is_correct,
    count_flawed,
    generate,
    item_of,
    warmup_completion,
    worked_lines,
)
from east.grading import answers_equal
from tests.helpers import compose as _compose


def _dataset_cfg(name, **overrides):
    """The typed dataset config (east.data.DatasetConfig) of ``dataset=name`` with overrides."""
    from omegaconf import OmegaConf

    cfg = _compose([f"dataset={name}"] + [f"dataset.{k}={v}" for k, v in overrides.items()])
    return OmegaConf.to_object(cfg.dataset)


def test_arith_is_deterministic_disjoint_and_gsm8k_formatted():
    spec = ArithConfig(warmup_size=300, train_size=50, test_size=50)
    a, b = generate(spec), generate(spec)
    assert a == b
    questions = [{p.question for p in a[s]} for s in ("warmup", "train", "test")]
    assert sum(map(len, questions)) == 400 and len(set().union(*questions)) == 400
    p = a["train"][0]
    assert p.solution.rsplit("\n", 1)[1] == f"#### {p.gold}"
    assert generate(ArithConfig(seed=1, train_size=5, test_size=5, warmup_size=5)) != generate(
        ArithConfig(seed=2, train_size=5, test_size=5, warmup_size=5)
    )
    with pytest.raises(ValueError, match="only .* distinct problems"):
        generate(ArithConfig(steps=1, max_number=2, warmup_size=20_000, warmup_short_share=0))


def test_arith_warmup_can_teach_a_slip_that_sampling_avoids():
    """dataset.arith.warmup_short_share / warmup_slip_items: of the warm-up problems about the
    listed items, that share of solutions stop one operation short and box the total before
    it; the questions, the training and test splits, and every other warm-up solution are the
    plain task's (its stream is pinned by a digest, so cached stages keep their keys)."""
    import hashlib

    plain_spec = ArithConfig(steps=3, warmup_size=400, train_size=100, test_size=100, warmup_short_share=0)
    slip = ["apples", "pens"]
    plain = generate(plain_spec)
    slipped = generate(replace(plain_spec, warmup_short_share=0.25, warmup_slip_items=slip))
    assert (slipped["train"], slipped["test"]) == (plain["train"], plain["test"])
    assert [p.question for p in slipped["warmup"]] == [p.question for p in plain["warmup"]]
    about = [p for p in plain["warmup"] if item_of(p.question) in slip]
    short = [(a, b) for a, b in zip(plain["warmup"], slipped["warmup"]) if a != b]
    assert len(short) == round(0.25 * len(about)) > 0
    for full, cut in short:
        assert item_of(full.question) in slip
        lines = worked_lines(full.solution).split(" ")
        assert worked_lines(cut.solution) == " ".join(lines[:-1])
        assert cut.gold == lines[-2].rstrip(".").rpartition("=")[2] and cut.solution.endswith(
            f"#### {cut.gold}"
        )
        assert warmup_completion(cut).endswith(f"=\\boxed{{{cut.gold}}}.")
    testbed = ArithConfig(
        steps=2,
        max_number=12,
        warmup_size=4000,
        train_size=1000,
        test_size=1000,
        seed=1234,
        warmup_short_share=0,
    )
    text = json.dumps(
        [[p.question, p.solution] for s in ("warmup", "train", "test") for p in generate(testbed)[s]]
    )
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == "de6fc433825d25c5"
    for bad, match in (
        ({"warmup_short_share": 1.5}, "warmup_short_share"),
        ({"warmup_short_share": -0.1}, "warmup_short_share"),
        ({"warmup_slip_items": ["pears"]}, r"warmup_slip_items: unknown \['pears'\]"),
        ({"steps": 1, "warmup_short_share": 0.5}, "needs dataset.arith.steps >= 2"),
    ):
        with pytest.raises(ValueError, match=match):
            ArithConfig(**bad)


def test_arith_chain_check_tells_a_right_derivation_from_a_lucky_total():
    from east.data.problems import Problem

    p = Problem(id="x", question="...", gold="8", solution="8+12=20. 20-12=8.\n#### 8")
    assert worked_lines(p.solution) == "8+12=20. 20-12=8."
    assert warmup_completion(p) == "8+12=20. 20-12=\\boxed{8}."
    assert worked_lines(warmup_completion(p)) == "8+12=20. 20-12=8."
    # The derivation itself, in either completion format, and with stray spacing.
    assert chain_is_correct(p, "8+12=20. 20-12=\\boxed{8}.")
    assert chain_is_correct(p, "8+12=20.  20-12=8. The answer is \\boxed{8}.")
    # The right total through a wrong line, a missing line, and a wrong total.
    assert not chain_is_correct(p, "8+12=21. 21-13=\\boxed{8}.")
    assert not chain_is_correct(p, "20-12=\\boxed{8}.")
    assert not chain_is_correct(p, "8+12=20. 20-12=\\boxed{9}.")
    # Of a question's right answers, how many got there through wrong lines.
    responses = ["8+12=20. 20-12=\\boxed{8}.", "8+12=21. 21-13=\\boxed{8}.", "8+12=20. 20-12=\\boxed{9}."]
    assert count_flawed(p, responses, [True, True, False]) == (2, 1)
    # Every generated problem's own warm-up target passes the check.
    problems = generate(ArithConfig(warmup_size=50, train_size=50, test_size=50))["train"]
    assert all(chain_is_correct(q, warmup_completion(q)) for q in problems)


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
        (['["a list"]'], r"train.jsonl:1: not a JSON object"),
        ([""], r"train.jsonl: the file is empty"),
    ],
)
def test_bad_files_name_the_file_and_line(tmp_path, lines, message):
    _write(tmp_path / "train.jsonl", lines)
    _write(tmp_path / "test.jsonl", ['{"question": "q", "answer": "#### 1"}'])
    with pytest.raises(DataError, match=message):
        load_splits(_dataset_cfg("gsm8k", path=tmp_path))


# Every row-level fault, as a line of a GSM8K-format train file: (name, raw bytes, kind).
ROW_FAULTS = [
    ("malformed JSON", b"{not json", "malformed JSON"),
    ("a list, not an object", b'["a list"]', "not a JSON object"),
    ("a number, not an object", b"3", "not a JSON object"),
    ("invalid UTF-8", b'{"question": "q\xff", "answer": "#### 1"}', "not valid UTF-8"),
    ("missing question", b'{"answer": "#### 2"}', "missing field 'question'"),
    ("empty question", b'{"question": " ", "answer": "#### 2"}', "question field 'question' is empty"),
    (
        "question is a list",
        b'{"question": ["q"], "answer": "#### 2"}',
        "question field 'question' is not text",
    ),
    (
        "no #### marker",
        b'{"question": "q", "answer": "no marker"}',
        "GSM8K solution has no '#### <answer>' line",
    ),
    (
        "gold is a word",
        b'{"question": "q", "answer": "#### eighteen"}',
        "GSM8K gold after '####' is not a number",
    ),
    ("answer is a dict", b'{"question": "q", "answer": {"a": 1}}', "answer field 'answer' is not text"),
    ("duplicate id", b'{"question": "q9", "answer": "#### 9", "id": "a"}', "duplicate id"),
    # Issue 21: rows that used to crash later, naming no file or line, or be accepted.
    (
        "a lone surrogate in the question",
        b'{"question": "q\\ud800", "answer": "#### 2"}',
        "question field 'question' is not valid Unicode",
    ),
    (
        "a 25,000-character question (a 20 MB one allocated 5.7 GB)",
        b'{"question": "' + b"x" * 25_000 + b'", "answer": "#### 2"}',
        "question too long",
    ),
]
_GOOD = [
    b'{"question": "q1", "answer": "#### 1", "id": "a"}',
    b'{"question": "q3", "answer": "#### 3", "id": "b"}',
]


@pytest.mark.parametrize(("name", "raw", "kind"), ROW_FAULTS, ids=[f[0] for f in ROW_FAULTS])
def test_every_row_fault_is_a_file_line_error_or_a_counted_skip(tmp_path, caplog, name, raw, kind):
    (tmp_path / "train.jsonl").write_bytes(b"\n".join([_GOOD[0], raw, _GOOD[1]]) + b"\n")
    _write(tmp_path / "test.jsonl", ['{"question": "q", "answer": "#### 1", "id": "t"}'])
    with pytest.raises(DataError, match=rf"train.jsonl:2: {re.escape(kind)}"):
        load_splits(_dataset_cfg("gsm8k", path=tmp_path, id_field="id"))
    splits = load_splits(_dataset_cfg("gsm8k", path=tmp_path, id_field="id", on_bad_row="skip"))
    assert [p.gold for p in splits.train] == ["1", "3"]
    assert splits.skipped["train"] == {kind: 1}
    assert "skipped 1 bad rows" in caplog.text


def test_a_byte_order_mark_is_not_a_fault(tmp_path):
    (tmp_path / "train.jsonl").write_bytes(b"\xef\xbb\xbf" + _GOOD[0] + b"\n\xef\xbb\xbf" + _GOOD[1] + b"\n")
    _write(tmp_path / "test.jsonl", ['{"question": "q", "answer": "#### 1"}'])
    splits = load_splits(_dataset_cfg("gsm8k", path=tmp_path))
    assert [p.gold for p in splits.train] == ["1", "3"]


#: Field golds that are no answer (the fault table lists them).
BAD_FIELD_GOLDS = [
    ("[3]", "is not text"),
    ('{"a": 3}', "is not text"),
    ("true", "is not text"),
    ('"\\\\boxed{3"', "no gold answer"),
    ('""', "is empty"),
    ("null", "is not text"),
    ("NaN", "is not a finite number"),
    ("Infinity", "is not a finite number"),
    ("-Infinity", "is not a finite number"),
    ("1e999", "is not a finite number"),
    ('"nan"', "gold answer is not a finite number"),
    ('"inf"', "gold answer is not a finite number"),
    ('"\\u200b"', "is empty"),
    ('" \\u200b\\u2060 "', "is empty"),
]


@pytest.mark.parametrize(("answer", "kind"), BAD_FIELD_GOLDS)
def test_field_golds_must_be_text_or_numbers(tmp_path, answer, kind):
    _write(tmp_path / "train.jsonl", [f'{{"question": "q", "answer": {answer}}}'])
    _write(tmp_path / "test.jsonl", ['{"question": "t", "answer": "3"}'])
    with pytest.raises(DataError, match=rf"train.jsonl:1: .*{re.escape(kind)}"):
        load_splits(_dataset_cfg("jsonl", path=tmp_path))
    _write(
        tmp_path / "train.jsonl",
        ['{"question": "q", "answer": 3}', '{"question": "r", "answer": "\\\\boxed{4}"}'],
    )
    assert [p.gold for p in load_splits(_dataset_cfg("jsonl", path=tmp_path)).train] == ["3", "4"]


def test_a_data_file_that_is_not_a_regular_file_is_refused_not_waited_on(tmp_path):
    """A FIFO as the data file used to block the run forever, silently."""
    import os

    folder = tmp_path / "data"
    folder.mkdir()
    os.mkfifo(folder / "train.jsonl")
    _write(folder / "test.jsonl", ['{"question": "q", "answer": "3"}'])
    with pytest.raises(DataError, match=r"train.jsonl: not a regular file \(a pipe, socket or device\)"):
        load_splits(_dataset_cfg("jsonl", path=folder))


def test_bring_your_own_jsonl(tmp_path):
    _write(tmp_path / "train.jsonl", [json.dumps({"prompt": f"q{i}", "final": str(i)}) for i in range(3)])
    _write(tmp_path / "test.jsonl", [json.dumps({"prompt": "t", "final": r"\frac12"})])
    splits = load_splits(_dataset_cfg("jsonl", path=tmp_path, question_field="prompt", answer_field="final"))
    assert [p.gold for p in splits.train] == ["0", "1", "2"]
    assert splits.tests["test"][0].gold == r"\frac12"
    with pytest.raises(
        ValueError, match=r"dataset.test_sets=\['nope'\]: allowed: a non-empty subset of test"
    ):
        load_splits(
            _dataset_cfg(
                "jsonl", path=tmp_path, test_sets="[nope]", question_field="prompt", answer_field="final"
            )
        )
