"""run.py's check of every job before any starts (east/cli.py): one line per bad job, with a
"did you mean" where one is close, and exit code 2."""

import subprocess
import sys
from pathlib import Path

import pytest

from east.cli import preflight, problems_of
from east.config import register_configs

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"

register_configs()


def test_a_good_run_and_a_good_sweep_have_no_problems():
    assert problems_of([], False, CONF) == []
    assert problems_of(["objective=sft,dpo,kto", "east.sharpness=0,1,2"], True, CONF) == []


def test_a_misspelt_key_is_named_with_the_key_it_is_close_to():
    [line] = problems_of(["east.sharpnes=2"], False, CONF)
    assert "east.sharpnes" in line and "did you mean east.sharpness?" in line
    assert "\n" not in line


@pytest.mark.parametrize(
    ("override", "closest"),
    [
        ("objective.trainer.learnin_rate=1e-4", "objective.trainer.learning_rate"),  # a TRL setting
        ("mapings=power", "mapping"),  # a config group, not a schema field (was: sampling)
    ],
)
def test_a_misspelt_trainer_setting_or_group_is_named_with_the_closest(override, closest):
    [line] = problems_of([override], False, CONF)
    assert f"did you mean {closest}?" in line


def test_an_unknown_option_lists_the_options_and_the_closest():
    [line] = problems_of(["objective=dpp"], False, CONF)
    assert "objective=dpp" in line and "did you mean objective=dpo?" in line
    assert "kto" in line and "sft" in line


def test_a_wrong_type_names_key_and_value():
    [line] = problems_of(["east.sharpness=abc"], False, CONF)
    assert "east.sharpness" in line and "abc" in line


def test_an_out_of_range_value_in_one_cell_names_that_cell_only():
    problems = problems_of(["east.sharpness=1,2,500"], True, CONF)
    assert len(problems) == 1
    assert problems[0].startswith("cell east.sharpness=500:")
    assert "sharpness" in problems[0]


def test_every_bad_cell_of_a_sweep_is_reported_not_only_the_first():
    problems = problems_of(["east.sharpness=-50,1", "objective=sft,dpo"], True, CONF)
    assert len(problems) == 2  # sharpness=-50 with each objective
    assert all("east.sharpness=-50" in p for p in problems)


def test_preflight_exits_2_and_leaves_non_running_flags_to_hydra(capsys):
    with pytest.raises(SystemExit) as e:
        preflight(["east.sharpnes=2"], CONF)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: ")
    preflight(["--cfg", "job", "east.sharpnes=2"], CONF)  # Hydra's own: no exit here
    preflight(["objective=dpo"], CONF)  # good: returns


def test_run_py_reports_a_bad_sweep_cell_before_any_job_starts(tmp_path):
    out = subprocess.run(
        [sys.executable, "run.py", "-m", "east.sharpness=1,500", f"hydra.sweep.dir={tmp_path}/s"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [
        line for line in out.stderr.strip().splitlines() if line.startswith("Error: cell ")
    ]
    assert not (tmp_path / "s").exists()  # nothing ran


def _run(*overrides: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    env.pop("PYTHONPATH", None)  # no fake vLLM from tests/fakes
    return subprocess.run(
        [sys.executable, "run.py", *overrides, f"hydra.run.dir={tmp_path}/run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


def test_a_hub_model_offline_is_one_line_naming_the_local_alternative(tmp_path):
    out = _run("model=llama-3.2-1b", "dataset=gsm8k", tmp_path=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    [error] = [line for line in out.stderr.splitlines() if line.startswith("Error: ")]
    assert "meta-llama/Llama-3.2-1B-Instruct" in error and "model.path=" in error
    assert "Traceback" not in out.stderr


def test_the_vllm_sampler_without_vllm_says_how_to_install_it(tmp_path):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401

        pytest.skip("vLLM is installed here")
    except ImportError:
        pass
    out = _run("sampler=vllm", tmp_path=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    [error] = [line for line in out.stderr.splitlines() if line.startswith("Error: ")]
    assert "pip install 'east[vllm]'" in error and "sampler=hf" in error
    assert "Traceback" not in out.stderr


def test_the_resolved_config_prints(tmp_path):
    """`--cfg job --resolve` once crashed on ${hydra:runtime.output_dir} (no run folder yet)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "--cfg", "job", "--resolve", f"paths.cache_dir={tmp_path}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "output_dir: null" in out.stdout and "${" not in out.stdout


def test_a_config_file_its_schema_refuses_is_named_with_the_whole_reason(tmp_path):
    """A user's objective file on the search path: a value the schema's types refuse fails
    while composing, and Hydra puts the reason on the line after "ValidationError raised while
    composing config:" (it was cut there); a name no objective registered says how to add one."""
    (tmp_path / "objective").mkdir()
    text = (CONF / "objective" / "dpo.yaml").read_text()
    (tmp_path / "objective" / "rpo.yaml").write_text(text.replace("name: dpo", "name: dpo\nsft_k: many"))
    [line] = problems_of([f"hydra.searchpath=[file://{tmp_path}]", "objective=rpo"], False, CONF)
    assert (
        line
        == "In 'objective/rpo': objective.sft_k: Value 'many' of type 'str' could not be converted to Integer"
    )
    (tmp_path / "objective" / "rpo.yaml").write_text(text.replace("name: dpo", "name: rpo"))
    [line] = problems_of([f"hydra.searchpath=[file://{tmp_path}]", "objective=rpo"], False, CONF)
    assert line.startswith(
        "invalid config objective.name='rpo': allowed: sft, dpo, kto, orpo, simpo; to add one"
    ), line
    assert "register_objective" in line and "imports" in line


def test_a_key_below_a_null_node_names_the_key_and_the_choice_that_nulls_it():
    # OmegaConf's own words were "Unexpected type for root: NoneType".
    [line] = problems_of(["dataset=jsonl", "dataset.path=/tmp", "dataset.arith.steps=1"], False, CONF)
    assert line == (
        "cannot set dataset.arith.steps: dataset.arith is null with dataset=jsonl (it applies to other choices only)"
    ), line
