"""No silent wrong result, round two (issue 28): each case below once gave a different result
than asked for without a word. Each test failed on the code before the fix.

``SILENT`` lists them for the fault table (tests/FAULTS.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from east.data import load_splits
from east.errors import ConfigError, UserError
from east.report import build_table, collect_runs, setting_of, to_markdown
from east.validate import validate
from tests.helpers import compose

#: (fault, outcome, test) for tests/FAULTS.md.
SILENT = [
    (
        "debug=fast with dataset=jsonl dataset.path=X (the preset's arith sizes stayed on the node)",
        "works",
        "test_a_preset_never_replaces_your_dataset",
    ),
    (
        "dataset.path=X without dataset=jsonl (trained on arith)",
        "clear error",
        "test_a_path_for_the_embedded_task...",
    ),
    (
        "numeric JSON gold 0.00001 / 1e21 / 20000000000000000.0",
        "graded exactly",
        "test_a_numeric_gold_keeps_its_text",
    ),
    ("a sweep over a field the table does not name", "works", "test_a_sweep_table_has_a_row_per_cell..."),
    (
        "a user mapping at sharpness 0 (became uniform)",
        "works",
        "test_a_user_mapping_runs_its_formula_at_zero",
    ),
    (
        "a built-in declared uniform at 0 whose formula is not",
        "clear error",
        "test_a_mapping_declared_uniform_at_zero_is_checked",
    ),
    (
        "sampling.n=1: every entropy 0 under an EAST mapping",
        "clear error",
        "test_one_sample_per_question_...",
    ),
    ("a mapping whose weights all come out equal", "works", "test_equal_weights_are_tabled_as_vanilla"),
    (
        "a training loss that ends far above its start (learning_rate=1.0)",
        "flagged",
        "test_a_diverged_run_is_flagged...",
    ),
    (
        "a read-only hydra.run.dir or paths.output_dir",
        "clear error",
        "test_a_folder_that_cannot_be_written...",
    ),
]


def _typed(overrides):
    return OmegaConf.to_object(compose(overrides))


def _rows(folder: Path, name: str, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_preset_never_replaces_your_dataset(tmp_path, shared_data):
    """debug=fast set dataset.arith, which stayed on a file dataset's node: the loader then
    built the embedded task, whatever dataset.path held, and results.json said jsonl."""
    data = tmp_path / "mine"
    _rows(data, "train.jsonl", [{"question": f"my question {i}?", "answer": str(i)} for i in range(30)])
    _rows(data, "test.jsonl", [{"question": f"my test {i}?", "answer": str(i)} for i in range(20)])
    c = _typed(["debug=fast", "dataset=jsonl", f"dataset.path={data}"])
    assert c.dataset.arith is None
    splits = load_splits(c.dataset)
    assert [p.question for p in splits.train] == [f"my question {i}?" for i in range(30)]
    assert [p.question for p in splits.tests["test"]] == [f"my test {i}?" for i in range(20)]
    c = _typed(["debug=fast", "dataset=jsonl", f"dataset.path={data}", "dataset.max_train=5"])
    assert len(load_splits(c.dataset).train) == 5
    c = _typed(["debug=fast", "dataset=gsm8k", f"paths.data_dir={shared_data}", "dataset.max_test=16"])
    splits = load_splits(c.dataset)
    assert len(splits.train) == 7473 and len(splits.tests["gsm8k"]) == 16
    assert splits.train[0].question.startswith("Natalia")  # GSM8K's first training question
    # The preset's sizes still shape the embedded task, and an explicit size wins.
    assert len(load_splits(_typed(["debug=fast"]).dataset).train) == 24
    assert len(load_splits(_typed(["debug=fast", "dataset.arith.train_size=200"]).dataset).train) == 200


def test_a_path_for_the_embedded_task_is_refused_naming_dataset_jsonl(tmp_path):
    _rows(tmp_path, "train.jsonl", [{"question": "q", "answer": "1"}])
    with pytest.raises(ConfigError, match=r"dataset.path=.*add dataset=jsonl"):
        validate(compose([f"dataset.path={tmp_path}"]))


@pytest.mark.parametrize("gold", ["0.00001", "1e21", "20000000000000000.0", "-0.5", "3"])
def test_a_numeric_gold_keeps_its_text(tmp_path, gold):
    """A JSON number was read as a float and written back as 1e-05, 1e+21, 2e+16: a correct
    \\boxed{0.00001} was graded wrong."""
    from east.grading import grade_questions

    _rows(tmp_path, "train.jsonl", [])
    (tmp_path / "train.jsonl").write_text(f'{{"question": "q", "answer": {gold}}}\n')
    (tmp_path / "test.jsonl").write_text(f'{{"question": "t", "answer": {gold}}}\n')
    splits = load_splits(_typed(["dataset=jsonl", f"dataset.path={tmp_path}"]).dataset)
    assert splits.train[0].gold == gold
    [graded] = grade_questions([([f"The answer is \\boxed{{{gold}}}."], splits.train[0].gold)])
    assert graded.correct == [True]


def _result(folder: Path, seed: int, trained: float, overrides: list[str], write_overrides=True) -> dict:
    run = {
        "objective": "sft",
        "mapping": "power",
        "sharpness": 3.0,
        "model": "tiny",
        "dataset": "arith",
        "seed": seed,
        "experiment": None,
    }
    if write_overrides:
        run["overrides"] = overrides
    r = {"run": run, "eval": {"arith": {"base": 0.1, "trained": trained, "n": 16}}}
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(r))
    return r


@pytest.mark.parametrize("recorded", [True, False], ids=["in results.json", "from .hydra/overrides.yaml"])
def test_a_sweep_table_has_a_row_per_cell_naming_the_fields_that_differ(tmp_path, recorded):
    """``-m debug=fast objective.trainer.learning_rate=1e-6,1.0`` ran two cells; the table
    showed one (the later overwrote the earlier: cells were keyed by seed)."""
    for i, (lr, acc) in enumerate((("1e-6", 0.125), ("1.0", 0.0))):
        overrides = ["debug=fast", f"objective.trainer.learning_rate={lr}", "paths.cache_dir=/x"]
        _result(tmp_path / str(i), 0, acc, overrides, write_overrides=recorded)
        if not recorded:
            (tmp_path / str(i) / ".hydra").mkdir()
            (tmp_path / str(i) / ".hydra" / "overrides.yaml").write_text(
                "".join(f"- {o}\n" for o in overrides)
            )
    table = [r for r in build_table(collect_runs(tmp_path)) if r["row"] == "sft_east"]
    labels = {r["label"]: r["arith"]["mean"] for r in table}
    assert labels == {
        "+EAST (power a=3 objective.trainer.learning_rate=1e-6)": 12.5,
        "+EAST (power a=3 objective.trainer.learning_rate=1.0)": 0.0,
    }
    assert "paths.cache_dir" not in to_markdown(table)


def test_the_same_cell_twice_is_two_rows_named_by_folder(tmp_path):
    for name, acc in (("a", 0.5), ("b", 0.25)):
        _result(tmp_path / name, 0, acc, ["debug=fast"])
    rows = [r for r in build_table(collect_runs(tmp_path)) if r["row"] == "sft_east"]
    assert sorted(r["label"] for r in rows) == ["+EAST (power a=3 run a)", "+EAST (power a=3 run b)"]


def test_a_user_mapping_runs_its_formula_at_zero():
    """register_mapping assumed uniform_at_zero=True: shifted(h, a) = h + a at a = 0 trained on
    weights 1.00-1.00 where its formula gives 0.65-1.35."""
    from east.weighting import MAPPINGS, canonical, compute_weights, is_vanilla, register_mapping

    try:
        register_mapping("shifted_silent")(lambda h, a: h + a)
        assert canonical("shifted_silent", 0.0) == ("shifted_silent", 0.0)
        assert not is_vanilla("shifted_silent", 0.0)
        w = compute_weights([0.5, 1.0, 1.5], "shifted_silent", 0.0)
        assert np.allclose(w, [0.5, 1.0, 1.5])
        register_mapping("flat_silent", uniform_at_zero=True)(lambda h, a: h**a)
        assert canonical("flat_silent", 0.0) == ("uniform", 0.0)  # declared: reuses vanilla
    finally:
        MAPPINGS.pop("shifted_silent", None)
        MAPPINGS.pop("flat_silent", None)


def test_a_mapping_declared_uniform_at_zero_is_checked():
    """Each mapping that declares uniform_at_zero gives equal weights at a = 0 on any signal."""
    from east.weighting import MAPPINGS

    rng = np.random.default_rng(0)
    for name, spec in MAPPINGS.items():
        if spec.uniform_at_zero:
            values = rng.uniform(0.01, 0.99, 50)
            assert np.ptp(spec(values, 0.0)) == 0, name


def _build(c, entropies, mapping="power", sharpness=3.0):
    """build_records on questions with these answer entropies, each with a correct and an
    incorrect boxed response."""
    from east.stages.build import build_records

    c.east.mapping, c.east.sharpness = mapping, sharpness
    rows, grades = [], []
    for i, h in enumerate(entropies):
        rows.append({"id": f"q{i}", "question": f"{i}+1?", "gold": str(i + 1), "responses": ["a", "b"]})
        grades.append(
            {
                "id": f"q{i}",
                "answers": [str(i + 1), "0"],
                "boxed": [True, True],
                "correct": [True, False],
                "cluster_ids": [0, 1],
                "cluster_sizes": [1, 1],
                "cluster_correct": [True, False],
                "no_answer_cluster": None,
                "entropy": h,
                "accuracy": 0.5,
                "rejected_share": 0.5,
                "top_incorrect_cluster": 1,
                "timeouts": 0,
            }
        )
    return build_records(c, rows, grades)


def test_one_sample_per_question_under_an_east_mapping_is_one_line(tmp_path):
    """sampling.n=1 with the filters relaxed: every entropy 0, so power's weights were 0/0
    (a 12-frame traceback): now one line. Exponential's are defined (all 1): trained as
    vanilla, said so and tabled as such, not under an EAST label."""
    from east.weighting import WeightingError

    c = _typed(["sampling.n=1", "filters.drop_all_correct=false"])
    for mapping, a in (("power", 3.0), ("power", -1.0)):
        with pytest.raises(
            WeightingError, match=r"every one of the 3 kept questions has entropy 0 \(sampling.n=1"
        ):
            _build(c, [0.0, 0.0, 0.0], mapping, a)
    assert issubclass(WeightingError, UserError)
    _, stats = _build(c, [0.0, 0.0, 0.0], "exponential", 3.0)  # defined: equal weights, said so
    assert stats["weights_uniform"] is True
    records, stats = _build(c, [0.0, 0.0, 0.0], "uniform", 0.0)  # asked for vanilla: fine
    assert stats["weights_uniform"] and {r["weight"] for r in records} == {1.0}


def test_equal_weights_are_tabled_as_vanilla(caplog):
    from east.weighting import MAPPINGS, register_mapping

    c = _typed([])
    try:
        register_mapping("constant_silent")(lambda h, a: np.full_like(h, 2.0))
        _, stats = _build(c, [0.5, 1.0, 1.5], "constant_silent", 1.0)
    finally:
        MAPPINGS.pop("constant_silent", None)
    assert stats["weights_uniform"] is True
    assert "same weight" in caplog.text and "vanilla" in caplog.text
    run = {
        "run": {"objective": "sft", "mapping": "constant_silent", "sharpness": 1.0, "weights_uniform": True}
    }
    assert setting_of(run) == "sft"
    _, stats = _build(c, [0.5, 1.0, 1.5], "power", 1.0)
    assert stats["weights_uniform"] is False


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda h, a: h - 1.49, r"negative raw weight at index 0: -0\.99"),
        (lambda h, a: h * np.nan, r"non-finite raw weight at index 0: nan"),
        (lambda h, a: h[:-1], r"returned shape \(2,\) for 3 questions"),
        (lambda h, a: 1.0, r"returned shape \(\) for 3 questions"),
        (lambda h, a: "x", r"returned str, not an array of numbers"),
        (lambda h, a: 1 / 0, r"raised ZeroDivisionError: division by zero"),
    ],
    ids=["negative", "nan", "wrong length", "scalar", "text", "its own exception"],
)
def test_a_user_mapping_returning_nonsense_is_one_line_before_anything_is_built(fn, message):
    """A weight of -0.99 was cached by the build stage and the trainer raised 16 frames later."""
    from east.weighting import MAPPINGS, WeightingError, register_mapping

    c = _typed([])
    try:
        register_mapping("nonsense_silent")(fn)
        with pytest.raises(WeightingError, match=message):
            _build(c, [0.5, 1.0, 1.5], "nonsense_silent", 1.0)
    finally:
        MAPPINGS.pop("nonsense_silent", None)


def test_a_diverged_run_is_flagged_in_results_and_the_summary():
    """objective.trainer.learning_rate=1.0 trained to 0% accuracy without a word."""
    from east.results import summary_text
    from east.stages.save import loss_summary

    calm = [{"loss": 0.9}, {"loss": 0.6}, {"loss": 0.5}, {"loss": 0.45}, {"train_loss": 0.6}]
    wild = [{"loss": 0.5}, {"loss": 3.0}, {"loss": 9.0}, {"loss": 11.0}, {"loss": 12.0}]
    assert loss_summary(calm) == {"first": 0.9, "last": pytest.approx(0.5166, abs=1e-3), "diverged": False}
    assert loss_summary(wild)["diverged"] is True
    assert loss_summary([]) == {"first": None, "last": None, "diverged": False}
    results = {
        "run": {
            "objective": "sft",
            "mapping": "power",
            "sharpness": 3.0,
            "seed": 0,
            "model": "tiny",
            "dataset": "arith",
        },
        "data": {
            "kept": 3,
            "questions": 4,
            "weight": {"min": 0.5, "max": 1.5, "mean": 1.0},
            "entropy": {"min": 0.1, "max": 1.0, "mean": 0.5},
        },
        "train": {"loss": loss_summary(wild)},
        "eval": {},
        "seconds": 1.0,
    }
    text = summary_text(results)
    assert "WARNING: training diverged: loss 0.5 at the start, 10.7 at the end" in text


def test_a_folder_that_cannot_be_written_is_named_before_work(tmp_path, monkeypatch):
    """A read-only hydra.run.dir or paths.output_dir ended in a traceback once the run tried to
    write (root on this machine writes anywhere: os.access stands in for a read-only mount)."""
    import os

    from east.errors import writable_problem

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real(p, mode))
    problem = writable_problem(str(tmp_path / "out" / "run"), "paths.output_dir")
    assert problem == (
        f"invalid config paths.output_dir='{tmp_path / 'out' / 'run'}': {tmp_path} is not writable; "
        "point paths.output_dir at a writable folder"
    )
    with pytest.raises(ConfigError, match="is not writable"):
        validate(compose([f"paths.output_dir={tmp_path / 'out'}"]))
    validate(compose([f"paths.cache_dir={tmp_path / 'cache'}"]))  # a read-only cache may serve reads
