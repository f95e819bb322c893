"""GPU check, sized for a bare CUDA machine: a 1B-shaped LLaMA in bf16.

Two checks (``--pipeline`` runs the second instead of the first):

- **Steps** (default, ~10 minutes): weighted vs stock SFT and DPO step time (paired,
  interleaved, with a 95% interval for the ratio; paired.py), HF sampler tokens/s, and vLLM
  tokens/s where vLLM is installed.
- **Pipeline** (``--pipeline``, under 8 minutes on one H200): one cell end to end through the
  real stages with ``isolate_stages=true`` — base model, sample (HF backend), grade, build,
  weighted SFT, greedy evaluation of the base and trained models — on the 1B-shaped random
  model and a generated single-digit task (a random model's last number is right often
  enough for questions to be kept). Per stage it records the wall time, the worker's peak
  device memory (``EAST_DEVICE_LOG``: torch's counters, and nvidia-smi's over the worker's
  whole process tree, where a vLLM engine-core child holds its memory) and the device memory free after it (nvidia-smi: the
  driver never creates a CUDA context), and asserts that the driver never initialised CUDA,
  that the policy trained in fp32 under bf16 autocast, and that every stage handed its memory
  back. Then what the paper's cells add, each in its cheapest form: weighted DPO with its
  reference in the model's dtype (bf16), ZeRO-3 through ``accelerate launch`` on one process
  (DeepSpeed from the bundle), and the SFT train worker rerun with a checkpoint every step,
  killed (SIGKILL) after its first and rerun: it must resume and end at the uninterrupted
  run's weights, bit for bit.

First (seconds) it imports everything the checks use and stops in one line naming a module the
bundle or image lacks; the versions, DeepSpeed's and vLLM's included where present, go into the
JSON line. Prints one JSON line last.

The model is LLaMA-3.2-1B's shape (hidden 2048, 16 layers, 32 heads / 8 KV heads, FFN 8192,
vocabulary 128,256, tied embeddings) with random weights: step times and throughput depend
on shapes, not on what the weights learned. The tokenizer is built here (a byte-level BPE
trained on the prompts, padded with digit-bearing tokens to the model's vocabulary and given the
paper's Llama-3 template): no hub, no 100 MB GGUF.

A bare machine (torch and transformers, no network) needs only the wheels the image lacks;
experiments/benchmarks/gpu_bundle.sh writes them (under 64 MiB) into a folder:

    experiments/benchmarks/gpu_bundle.sh .bundle          # where pip works
    # on the GPU machine, from the checkout:
    pip install --no-index --no-deps --target /tmp/site .bundle/*.whl
    PYTHONPATH=/tmp/site:. python experiments/benchmarks/gpu_check.py [--pipeline]

``--shape tiny`` runs the same code end to end on a CPU in a minute (the rehearsal).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # paired.py, weighting_overhead.py

warnings.filterwarnings("ignore")

SHAPES = {
    # LLaMA-3.2-1B
    "1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
    ),
    # the rehearsal on a CPU
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=4096,
    ),
}


def questions(n: int) -> list[str]:
    return [
        f"Tom has {a} apples and buys {a + 7} more, then gives away {a // 2}. How many now?" for a in range(n)
    ]


def build_model_dir(shape: str, out: Path) -> Path:
    """A random-weight LLaMA of ``shape`` and a tokenizer built here, saved under ``out``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from east.models import build_tiny_tokenizer, llama3_style
    from east.prompts import PAPER_SYSTEM

    dims = SHAPES[shape]
    texts = [*questions(200), PAPER_SYSTEM, "<|begin_of_text|><|start_header_id|><|end_header_id|><|eot_id|>"]
    tok = build_tiny_tokenizer(texts, vocab_size=min(dims["vocab_size"], 2000))
    tok = llama3_style(tok)
    # Padded to the model's vocabulary with tokens that each read as one digit and a CJK
    # character: what a random model samples is then mostly digits, so its last number is
    # right about one time in nine on a one-digit task (the pipeline check keeps questions).
    fill = [f"{k % 9}{chr(0x4E00 + k // 9)}" for k in range(dims["vocab_size"] - len(tok))]
    tok.add_tokens(fill, special_tokens=False)
    config = LlamaConfig(
        **dims,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def device_memory() -> list[dict[str, float]] | None:
    """Used and total memory per GPU from nvidia-smi (no CUDA context in this process)."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return None
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split(",") for line in out.strip().splitlines()]
    return [{"used_gib": round(int(u) / 1024, 2), "total_gib": round(int(t) / 1024, 2)} for u, t in rows]


def write_digit_task(folder: Path, train: int, test: int) -> Path:
    """A jsonl dataset of one-digit sums: a random model's last number is often right."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, offset in (("train", train, 0), ("test", test, 1000)):
        rows = [
            {
                "id": f"{split}{i}",
                "question": f"What is {i % 5} + {(i // 5) % 5}?",
                "answer": str(i % 5 + (i // 5) % 5),
            }
            for i in range(offset, offset + n)
        ]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def kill_and_resume(trained: Path, folder: Path) -> dict[str, object]:
    """The train worker of ``trained`` rerun with a checkpoint every step, killed (SIGKILL, its
    whole process group) once the first checkpoint is complete, then run again: it must resume
    from that checkpoint and end at ``trained``'s weights."""
    import os
    import signal
    import subprocess

    from safetensors.torch import load_file

    from east.stages.launch import device_groups

    spec = json.loads((trained / "train_spec.json").read_text())
    spec.update(out_dir=str(folder / "out"), work_dir=str(folder / "work"))
    spec["settings"] = {**spec["settings"], "save_steps": 1}
    folder.mkdir(parents=True)
    path = folder / "train_spec.json"
    path.write_text(json.dumps(spec))
    env = dict(os.environ)
    group = device_groups(1, 1)[0]
    if group is not None:
        env["CUDA_VISIBLE_DEVICES"] = group
    cmd = [sys.executable, "-m", "east.stages.train", str(path)]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stderr=subprocess.DEVNULL)
    problems: list[str] = []
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if list((folder / "work").glob("checkpoint-*/trainer_state.json")):
            break
        time.sleep(0.1)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if not killed:
        problems.append("kill and resume: training ended before its first checkpoint could be killed")
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if rerun.returncode != 0:
        return {"problems": [f"kill and resume: the rerun failed: {rerun.stderr[-500:]}"]}
    if "resuming training from" not in rerun.stderr:
        problems.append("kill and resume: the rerun did not resume from the checkpoint")
    a = load_file(str(trained / "model" / "model.safetensors"))
    b = load_file(str(folder / "out" / "model" / "model.safetensors"))
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    if diff != 0.0:
        problems.append(f"kill and resume: ended {diff:.3g} away from the uninterrupted run's weights")
    return {"killed_after_checkpoint": killed, "max_abs_diff": diff, "problems": problems}


def pipeline_check(args: argparse.Namespace) -> dict[str, object]:
    """One cell through the real stages, each weight-loading one in its own process."""
    import os

    from hydra import compose, initialize_config_dir

    from east.config import register_configs
    from east.data import load_splits
    from east.pipeline import stages_for
    from east.validate import validate

    root = Path(__file__).resolve().parents[2]
    tmp = Path(tempfile.mkdtemp())
    started = time.perf_counter()
    model = build_model_dir(args.shape, tmp / "model")
    data = write_digit_task(tmp / "data", args.prompts, args.prompts // 2)
    os.environ["EAST_DEVICE_LOG"] = str(tmp / "device.jsonl")
    register_configs()
    overrides = [
        "model=llama-3.2-1b",
        f"model.path={model}",
        "dataset=jsonl",
        f"dataset.path={data}",
        # 25 distinct one-digit sums: the test questions repeat training ones (a smoke check of
        # the stages, not a result).
        "dataset.allow_test_in_train=true",
        "logger=none",
        "isolate_stages=true",
        "sampler=hf",
        "sampler.batch_size=256",
        f"sampling.n={args.n}",
        f"sampling.max_new_tokens={args.max_new_tokens}",
        f"evaluation.max_new_tokens={args.max_new_tokens}",
        "filters.require_boxed_correct=false",
        "filters.require_boxed_incorrect=false",
        "objective.trainer.num_train_epochs=1",
        "objective.trainer.max_length=1024",
        f"paths.cache_dir={tmp / 'cache'}",
        f"paths.output_dir={tmp / 'out'}",
    ]

    def configured(*more: str):
        with initialize_config_dir(config_dir=str(root / "conf"), version_base="1.3"):
            c = validate(compose(config_name="config", overrides=[*overrides, *more]))
        return stages_for(c)

    stages = configured()
    c = stages.c
    splits = load_splits(c.dataset)
    report: list[dict[str, object]] = []

    def stage(label: str, fn):
        start = time.perf_counter()
        result = fn()
        report.append(
            {"stage": label, "seconds": round(time.perf_counter() - start, 1), "after": device_memory()}
        )
        print(f"{label}: {report[-1]}", file=sys.stderr)
        return result

    test = next(iter(splits.tests))
    base = stage("base_model", lambda: stages.base_model(splits))
    samples = stage("sample", lambda: stages.sample(base, splits.train))
    grades = stage("grade", lambda: stages.grade(samples))
    records = stage("build", lambda: stages.build(samples, grades))
    trained = stage("train", lambda: stages.train(base, records))
    stage("evaluate_base", lambda: stages.evaluate(base, test, splits.tests[test], "evaluate_base"))
    stage("evaluate", lambda: stages.evaluate(trained, test, splits.tests[test], "evaluate"))
    # What the paper's cells add, each in its cheapest form: DPO with its reference in the
    # model's dtype (bf16 on a GPU), ZeRO-3 through accelerate (one process: DeepSpeed from
    # the bundle; zero3_cpu rehearses it on a CPU), and a train worker killed after its first
    # checkpoint, resumed to the weights of the uninterrupted run above.
    cuda = torch.cuda.is_available()
    dpo = configured("objective=dpo")
    dpo_trained = stage(
        "train_dpo", lambda: dpo.train(base, stage("build_dpo", lambda: dpo.build(samples, grades)))
    )
    zero3 = configured(
        "distributed=zero3" if cuda else "distributed=zero3_cpu", "distributed.num_processes=1"
    )
    zero3_trained = stage("train_zero3", lambda: zero3.train(base, records))
    resume = stage("train_kill_resume", lambda: kill_and_resume(trained.path, tmp / "resume"))
    log = tmp / "device.jsonl"
    peaks = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    info = json.loads((trained.path / "train_info.json").read_text())
    kept = json.loads((records.path / "stats.json").read_text())["kept"]
    dpo_info = json.loads((dpo_trained.path / "train_info.json").read_text())
    zero3_info = json.loads((zero3_trained.path / "train_info.json").read_text())
    problems = list(resume["problems"])
    if zero3_info["sharding"]["distributed_type"] != "DEEPSPEED":
        problems.append(f"distributed=zero3 trained as {zero3_info['sharding']}")
    if cuda and dpo_info["reference_dtype"] not in ("bfloat16", "float16"):  # model.dtype=auto: bf16
        problems.append(
            f"the DPO reference computed in {dpo_info['reference_dtype']}, not the model's 16 bits"
        )
    if torch.cuda.is_initialized():
        problems.append("the driver initialised CUDA: it holds a context (and maybe memory)")
    if torch.cuda.is_available():
        if info["param_dtype"] != "float32" or info["mixed_precision"] != "bf16":
            problems.append(f"the policy trained as {info['param_dtype']} / {info['mixed_precision']}")
        if info["devices_per_process"] != 1:
            problems.append(f"the train worker saw {info['devices_per_process']} devices")
        idle = report[0]["after"]
        for r in report[1:]:
            grown = [a["used_gib"] - b["used_gib"] for a, b in zip(r["after"], idle)]
            if max(grown) > 1.0:
                problems.append(f"{r['stage']}: {max(grown):.1f} GiB still used on a GPU after it")
    return {
        "check": "pipeline",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "shape": args.shape,
        "kept": kept,
        "train": info,
        "train_dpo": {k: dpo_info[k] for k in ("param_dtype", "mixed_precision", "reference_dtype")},
        "train_zero3": zero3_info["sharding"],
        "kill_resume": resume,
        "stages": report,
        "worker_peaks": peaks,
        "problems": problems,
        "seconds": round(time.perf_counter() - started, 1),
    }


#: What the checks import (module, why), tried first, in seconds: a bundle that misses one
#: fails here, not minutes into a model build.
IMPORTS = [
    ("transformers", "models"),
    ("trl", "the weighted trainers"),
    ("accelerate", "training processes"),
    ("datasets", "training data"),
    ("hydra", "east's configs"),
    ("omegaconf", "east's configs"),
    ("math_verify", "grading (--pipeline)"),
    ("east.objectives.dpo.trainer", "the weighted trainers"),
    ("east.pipeline", "the stages (--pipeline)"),
]
#: Imported when present, and reported: what runs depends on them.
OPTIONAL = ["deepspeed", "vllm"]


def import_check() -> dict[str, str | None]:
    """Import everything the checks use, first; one line naming what is missing."""
    import importlib

    versions: dict[str, str | None] = {"torch": torch.__version__, "cuda": torch.version.cuda}
    for module, why in IMPORTS:
        try:
            imported = importlib.import_module(module)
        except Exception as e:  # the bundle or the image lacks it
            sys.exit(f"gpu_check: cannot import {module} ({why}): {type(e).__name__}: {e}")
        versions[module] = getattr(imported, "__version__", None)
    for module in OPTIONAL:
        try:
            versions[module] = importlib.import_module(module).__version__
        except Exception as e:
            versions[module] = f"absent ({type(e).__name__})"
    print(f"imports: {json.dumps(versions)}", file=sys.stderr)
    return versions


def main() -> None:
    started = time.perf_counter()
    versions = import_check()
    print(f"import check: {time.perf_counter() - started:.1f}s", file=sys.stderr)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    parser.add_argument("--pairs", type=int, default=20, help="paired step timings per objective")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--pipeline", action="store_true", help="one cell through the isolated stages")
    args = parser.parse_args()
    if args.pipeline:
        result = {**pipeline_check(args), "versions": versions}
        print(json.dumps(result))
        if result["problems"]:
            sys.exit(1)
        return
    cuda = torch.cuda.is_available()
    started = time.perf_counter()
    out = build_model_dir(args.shape, Path(tempfile.mkdtemp()) / f"random-{args.shape}")
    result: dict[str, object] = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "shape": args.shape,
        "dtype": "bfloat16" if cuda else "float32",
        "torch": torch.__version__,
        "versions": versions,
    }

    # Weighted vs stock trainer steps (weighting_overhead.py's paired comparison, on this model).
    from weighting_overhead import compare

    step_args = argparse.Namespace(mode="step", batch=args.batch, bf16=cuda, pairs=args.pairs, warmup=3)
    for objective in ("sft", "dpo"):
        r = compare(objective, out, step_args)
        result[f"{objective}_weighted_over_stock"] = r["ratio"]
        result[f"{objective}_ci"] = [r["ci_low"], r["ci_high"]]
        result[f"{objective}_step_ms"] = {"weighted": r["a_ms"], "stock": r["b_ms"]}
        print(f"{objective}: {r}", file=sys.stderr)
        if cuda:
            torch.cuda.empty_cache()

    # HF sampler throughput, prompts tokenized once as the pipeline does.
    from transformers import AutoTokenizer

    from east.prompts import PAPER_SYSTEM, build_prompts
    from east.samplers import SamplingParams, sample_seed
    from east.samplers.hf import HFSampler

    tok = AutoTokenizer.from_pretrained(out)
    prompts = build_prompts(tok, questions(args.prompts), PAPER_SYSTEM)
    seeds = [[sample_seed(0, str(i), j, 0) for j in range(args.n)] for i in range(args.prompts)]
    params = SamplingParams(n=args.n, temperature=0.8, top_p=0.95, max_new_tokens=args.max_new_tokens)
    sampler = HFSampler(batch_size=256, dtype="auto", progress=False)
    sampler.generate(str(out), prompts.token_ids, seeds, params)
    result["hf_sampler_tokens_per_second"] = round(sampler.tokens_generated / sampler.seconds, 1)

    try:
        from east.samplers.vllm import VLLMSampler
    except ImportError as e:
        result["vllm_tokens_per_second"] = None
        result["vllm"] = f"not installed ({e.__class__.__name__}): its wheel alone exceeds the 64 MiB bundle"
    else:
        vllm_sampler = VLLMSampler(dtype="auto")
        vllm_sampler.generate(str(out), prompts.token_ids, seeds, params)
        result["vllm_tokens_per_second"] = round(vllm_sampler.tokens_generated / vllm_sampler.seconds, 1)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
