"""The Hugging Face backend (``sampler=hf``): batched ``transformers.generate``, each
response sampled with its own seeded generator, so a (prompt, seed) gives the same response
whatever the batch or process it runs in."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from east.checks import check_int
from east.samplers.base import Generation, Sampler, SamplerConfig, SamplingParams, check_token_ids


@dataclass
class HFSamplerConfig(SamplerConfig):
    """``sampler=hf`` (conf/sampler/hf.yaml)."""

    _target_: str = "east.samplers.hf.HFSampler"
    batch_size: int = 64  # rows (prompt x sample) per generate call

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("sampler.batch_size", self.batch_size, 1, 1 << 20)


class SeededGumbelSampling:
    """A logits processor that samples row r from softmax(logits / T) (top-p filtered) with
    its own generator: argmax(logits / T + Gumbel noise) is an exact sample, and greedy
    decoding then picks it. Each row's noise depends only on its seed and step."""

    def __init__(
        self, seeds: list[int], temperature: float, top_p: float, device: torch.device, entropy: bool = True
    ):
        self.temperature, self.top_p, self.entropy = temperature, top_p, entropy
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.step_entropy: list[torch.Tensor] = []  # per step: entropy of each row's distribution

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float() / self.temperature
        if self.entropy:
            # Token-level uncertainty of the sampling distribution (the paper's "local
            # uncertainty" baseline), recorded here so it costs no second pass.
            logp = torch.log_softmax(scores, dim=-1)
            self.step_entropy.append(-(logp.exp() * logp).nan_to_num().sum(dim=-1))
        if self.top_p < 1.0:
            sorted_scores, order = scores.sort(dim=-1, descending=True)
            cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
            drop_sorted = (
                cumulative - sorted_scores.softmax(dim=-1) >= self.top_p
            )  # keep the first past top_p
            drop = drop_sorted.scatter(-1, order, drop_sorted)
            scores = scores.masked_fill(drop, float("-inf"))
        vocab = scores.shape[-1]
        uniform = torch.stack(
            [torch.rand(vocab, generator=g, device=scores.device) for g in self.generators[: scores.shape[0]]]
        )
        gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-20, max=1 - 1e-7)))
        return scores + gumbel


class HFSampler(Sampler):
    """Batched ``transformers.generate``: prompts grouped by length, n rows per prompt. The
    model stays loaded across calls with the same path until :meth:`close`."""

    Config = HFSamplerConfig
    returns_token_entropy = True
    #: The backend shapes its samples by nothing beyond its name (batching does not matter).
    cache_key = "hf"

    def __init__(
        self, batch_size: int = 64, dtype: str = "auto", device: str = "auto", progress: bool = True
    ):
        self.batch_size, self.dtype, self.progress = batch_size, dtype, progress
        self.device = (
            torch.device("cuda" if torch.cuda.is_available() else "cpu")
            if device == "auto"
            else torch.device(device)
        )
        self.tokens_generated = 0
        self.seconds = 0.0
        self._loaded: tuple[str, Any, Any] | None = None  # (path, tokenizer, model)

    def required_device_memory(self, model_path: str) -> int | None:
        """What must be free on the device before loading: the checkpoint's weights."""
        from east.models import checkpoint_bytes

        return checkpoint_bytes(model_path)

    def _load(self, model_path: str) -> tuple[Any, Any]:
        from east.models import load_model, load_tokenizer

        if self._loaded is None or self._loaded[0] != model_path:
            self.close()
            tokenizer = load_tokenizer(model_path)
            model = load_model(model_path, self.dtype).to(self.device).eval()
            self._loaded = (model_path, tokenizer, model)
        return self._loaded[1], self._loaded[2]

    def close(self) -> None:
        """Drop the loaded model (and, on a GPU, hand its cached memory back)."""
        if self._loaded is not None:
            self._loaded = None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def generate(
        self,
        model_path: str,
        prompts: list[list[int]],
        seeds: list[list[int]],
        params: SamplingParams,
        token_entropy: bool = False,
    ) -> Generation:
        from tqdm.auto import tqdm
        from transformers import GenerationConfig, LogitsProcessorList

        encoded = check_token_ids(prompts, seeds)
        tokenizer, model = self._load(model_path)
        rows = [(i, j, s) for i, row_seeds in enumerate(seeds) for j, s in enumerate(row_seeds)]
        rows.sort(key=lambda r: (len(encoded[r[0]]), r[0], r[1]))  # similar lengths share a batch
        out: list[list[str]] = [[""] * len(s) for s in seeds]
        entropy: list[list[float]] = [[0.0] * len(s) for s in seeds]
        greedy = params.temperature == 0
        record = token_entropy and not greedy
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=params.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        start = time.perf_counter()
        bar = tqdm(
            total=len(rows), desc="greedy" if greedy else "sampling", disable=not self.progress, unit="seq"
        )
        for b in range(0, len(rows), self.batch_size):
            batch = rows[b : b + self.batch_size]
            width = max(len(encoded[i]) for i, _, _ in batch)
            ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, (i, _, _) in enumerate(batch):  # left padding
                ids[r, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                mask[r, width - len(encoded[i]) :] = 1
            processors = LogitsProcessorList()
            sampler = None
            if not greedy:
                seeds_batch = [s for _, _, s in batch]
                sampler = SeededGumbelSampling(
                    seeds_batch, params.temperature, params.top_p, self.device, entropy=record
                )
                processors.append(sampler)
            with torch.inference_mode():
                generated = model.generate(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    generation_config=config,
                    logits_processor=processors,
                )
            new = generated[:, width:]
            mean_entropy = (
                _mean_until_eos(sampler.step_entropy, new, tokenizer.eos_token_id) if record else None
            )
            for r, (i, j, _) in enumerate(batch):
                if mean_entropy is not None:
                    entropy[i][j] = float(mean_entropy[r])
                tokens = new[r]
                length = int((tokens != tokenizer.pad_token_id).sum())
                self.tokens_generated += length
                out[i][j] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
            bar.update(len(batch))
        bar.close()
        self.seconds += time.perf_counter() - start
        return Generation(out, entropy if record else None)


def _mean_until_eos(step_entropy: list[torch.Tensor], new_tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Per row, the mean of the recorded step values over its tokens up to its first EOS."""
    values = torch.stack(step_entropy, dim=1)[:, : new_tokens.shape[1]]
    is_eos = (new_tokens[:, : values.shape[1]] == eos_id).long()
    valid = (is_eos.cumsum(dim=1) - is_eos) == 0  # up to and including the first EOS
    return (values * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1)
