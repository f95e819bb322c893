"""The fault table: every fault the test suite inflicts, and what happens.

Each row comes from the fault lists the other tests run (so a fault listed here is a fault
tested there). ``python -m tests.integration.test_fault_table`` rewrites ``tests/FAULTS.md``; the test
below fails when that file is out of date. Outcomes: *clear error* (one line naming the
key, file:line or artifact; exit 2 from run.py), *counted skip* (``on_bad_row=skip``:
counted by kind in results.json and the log), *rebuilt* (the artifact is verified,
discarded and rebuilt: same numbers), *bounded* (graded within the time bound, a cut
retried once at RETRY_FACTOR times it; every answer cut twice counted as a timeout),
*graded exactly* (math-verify's verdict), *survives* (the run completes and writes
results.json), *works* (an extreme config value that validates because it does what it
says, or an input that once gave a silently different result and now gives the right one;
every other extreme is a clear error), *one line* (Ctrl-C or SIGTERM: one line naming the
stage, exit 130 / 143), *flagged* (the run completes and says so in its summary and
results.json), *set aside* (a damaged checkpoint is moved out of the way with one line and
never resumed from), *stopped* (no process of the run outlives its driver).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.e2e.test_pipeline import PIPELINE_FAULTS
from tests.e2e.test_user_errors import USER_ERRORS
from tests.integration.test_grading_bound import ADVERSARIAL
from tests.integration.test_grading_differential import _big_number_pairs
from tests.integration.test_silent_results import SILENT
from tests.unit.test_cache import ARTIFACT_FAULTS, KEY_PATH_FAULTS
from tests.unit.test_config import BAD_VALUES, EXTREMES, NUMERIC_FIELDS, WORKS
from tests.unit.test_data import BAD_FIELD_GOLDS, ROW_FAULTS

TABLE = Path(__file__).resolve().parents[1] / "FAULTS.md"


def rows() -> list[tuple[str, str, str, str]]:
    """(area, fault, outcome, test) for every fault tried."""
    out = []
    for name in ADVERSARIAL:
        out.append(
            (
                "grading",
                f"answer and gold: {name}",
                "bounded",
                "test_grading_bound.py::test_an_adversarial_corpus...",
            )
        )
    out += [
        (
            "grading",
            "timeout raised inside math-verify (it catches Exception)",
            "bounded",
            "test_grading_bound.py::test_a_timeout_inside...",
        ),
        (
            "grading",
            "worker stuck in C code (SIGALRM blocked)",
            "bounded",
            "test_grading_bound.py::test_the_supervisor_kills...",
        ),
        (
            "grading",
            "worker dies inside a parse",
            "bounded",
            "test_grading_bound.py::test_the_supervisor_kills...",
        ),
        (
            "grading",
            "10,000 nested \\boxed{ (and 4 other nestings)",
            "bounded",
            "test_grading_bound.py::test_extraction_is_linear...",
        ),
        (
            "grading",
            "an answer of over 10,000 characters",
            "bounded",
            "test_grading_bound.py::test_an_answer_too_long...",
        ),
        (
            "grading",
            "answers near the bound under a CPU hog (2 busy processes a core)",
            "bounded",
            "test_grading_bound.py::test_a_load_spike...",
        ),
        (
            "grading",
            "a damaged parse-store file",
            "rebuilt",
            "test_grading_bound.py::test_a_damaged_parse_store...",
        ),
        (
            "grading",
            "an answer of over 400 characters (the expanded (x+1)^35)",
            "graded exactly",
            "test_grading_differential.py::test_a_long_answer...",
        ),
    ]
    for gold, answer in _big_number_pairs():
        shown = gold if len(gold) < 40 else gold[:37] + "..."
        value = answer if len(answer) < 30 else f"{answer[:12]}...({len(answer)} digits)"
        out.append(
            ("grading", f"{shown} vs {value}", "graded exactly", "test_grading_differential.py::test_big...")
        )
    for name, _, _ in ROW_FAULTS:
        out.append(
            ("data", f"row: {name}", "clear error / counted skip", "test_data.py::test_every_row_fault...")
        )
    for answer, _ in BAD_FIELD_GOLDS:
        out.append(
            (
                "data",
                f"field gold {answer}",
                "clear error / counted skip",
                "test_data.py::test_field_golds...",
            )
        )
    out.append(("data", "byte-order marks", "read", "test_data.py::test_a_byte_order_mark..."))
    out.append(("data", "a FIFO as the data file", "clear error", "test_data.py::test_a_data_file_that..."))
    for name in ARTIFACT_FAULTS:
        out.append(
            ("artifacts", f"stage folder: {name}", "rebuilt", "test_cache.py::test_an_artifact_that...")
        )
    for name in KEY_PATH_FAULTS:
        out.append(("artifacts", f"key path: {name}", "rebuilt", "test_cache.py::test_what_stands_at..."))
    out.append(
        (
            "artifacts",
            "a stage's lock held by a stopped process (paths.lock_timeout_s)",
            "clear error",
            "test_cache.py::test_a_lock_held...",
        )
    )
    for name in PIPELINE_FAULTS:
        out.append(
            ("artifacts", f"pipeline: {name}", "rebuilt", "test_pipeline.py::test_a_damaged_artifact...")
        )
    out += [
        (
            "artifacts",
            "samples and grades with missing, extra or repeated ids",
            "clear error",
            "test_pipeline.py::test_samples_and_grades...",
        ),
        (
            "artifacts",
            ".tmp folders of killed runs (and one under a live writer)",
            "rebuilt",
            "test_cache.py::test_stale_temporary...",
        ),
    ]
    for overrides, _ in BAD_VALUES:
        out.append(("config", " ".join(overrides), "clear error", "test_config.py::test_invalid_values..."))
    out.append(
        ("config", "EAST_CACHE_DIR= (empty)", "clear error", "test_config.py::test_an_empty_cache_dir...")
    )
    for field in NUMERIC_FIELDS:
        works = [f"{v}: {WORKS[(field, v)]}" for v in EXTREMES if (field, v) in WORKS]
        note = f" (works at {'; '.join(works)})" if works else ""
        out.append(
            (
                "config",
                f"{field.removeprefix('vllm:')} at {', '.join(EXTREMES)}{note}",
                "clear error / works" if works else "clear error",
                "test_config.py::test_numeric_extremes...",
            )
        )
    out.append(
        (
            "config",
            "model.dtype=float16 (trained in pure fp16 and diverged)",
            "survives",
            "test_pipeline.py::test_float16_trains...",
        )
    )
    for isolate in ("inline", "isolated"):
        out.append(
            (
                "run",
                f"Ctrl-C in a stage ({isolate})",
                "one line",
                "test_pipeline.py::test_ctrl_c_is_one_line...",
            )
        )
    out.append(
        (
            "config",
            "grading.timeout_s=0 through run.py",
            "clear error",
            "test_config.py::test_a_bad_value_is_one_line...",
        )
    )
    for where in ("init", "log (during training)", "finish"):
        out.append(
            ("W&B", f"service dead at {where}", "survives", "test_pipeline.py::test_a_failing_wandb...")
        )
    out += [
        (
            "W&B",
            "every call raising after the first failure",
            "survives",
            "test_tracking.py::test_a_dead_service...",
        ),
        (
            "W&B",
            "WANDB_MODE=loud in the environment, logger.mode=loud",
            "clear error",
            "test_tracking.py::test_bad_modes...",
        ),
    ]
    for fault, outcome, test in SILENT:
        out.append(("round two", fault, outcome, f"test_silent_results.py::{test}"))
    for fault in USER_ERRORS:
        out.append(("round two", fault, "clear error", "test_user_errors.py::test_a_users_situation..."))
    out += [
        (
            "round two",
            "a user mapping returning NaN, the wrong length, a scalar, text, or raising",
            "clear error",
            "test_silent_results.py::test_a_user_mapping_returning_nonsense...",
        ),
        (
            "round two",
            "a checkpoint with one byte flipped",
            "set aside",
            "test_train_resume.py::test_a_damaged...",
        ),
        (
            "round two",
            "a checkpoint cut short before its manifest",
            "rebuilt",
            "test_train_resume.py::test_a_checkpoint_cut_short...",
        ),
        (
            "round two",
            "SIGTERM to the driver mid-training",
            "one line",
            "test_user_errors.py::test_sigterm...",
        ),
        (
            "round two",
            "SIGKILL to the driver while two accelerate ranks train",
            "stopped",
            "test_user_errors.py::test_a_driver_killed...",
        ),
        (
            "round two",
            "an edit in entropy() (east.weighting), called by grading",
            "rebuilt",
            "test_keys.py::test_an_edit_in_a_function...",
        ),
        (
            "round two",
            "an edit in the sample, grade or evaluate body in the driver",
            "rebuilt",
            "test_keys.py::test_an_edit_in_a_function...",
        ),
        (
            "round two",
            "a user mapping's helper, module constant or imported user module edited",
            "rebuilt",
            "test_keys.py::test_a_mapping_is_keyed_by_all...",
        ),
    ]
    return out


def render() -> str:
    table = rows()
    counts = Counter(outcome for _, _, outcome, _ in table)
    lines = [
        "# Fault table",
        "",
        "Generated by `python -m tests.integration.test_fault_table` from the fault lists the tests run.",
        "",
        f"{len(table)} faults tried: " + ", ".join(f"{n} {o}" for o, n in sorted(counts.items())) + ".",
        "None hangs, none gives a silently different result, none loses results.json, and no"
        " user error is a traceback.",
        "",
        "| area | fault | outcome | test |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {f.replace('|', '/')} | {o} | `{t}` |" for a, f, o, t in table]
    return "\n".join(lines) + "\n"


def test_the_fault_table_is_current():
    assert TABLE.read_text() == render(), "run: python -m tests.integration.test_fault_table"


if __name__ == "__main__":
    TABLE.write_text(render())
    print(render().splitlines()[4])
