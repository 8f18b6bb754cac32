"""The CPU demo's toy base model: tokenizer, tiny Qwen2 model, CPU pretraining, cache and evaluation.

`build_toy_model()` returns a Hugging Face model directory (config.json, model.safetensors,
tokenizer files, generation_config.json) of a tiny Qwen2-architecture model pretrained from
scratch on the toy arithmetic word problems of `megarl.demo.toy_task`. It takes about a minute
on 2 CPU cores the first time and is cached afterwards under
`<cache root>/toy-arith-<hash of the settings>` (`megarl.runtime.cache`: `$MEGARL_CACHE_DIR`, else
`$XDG_CACHE_HOME/megarl`, else `~/.cache/megarl`; written to a temporary directory, then
renamed, so a killed build never leaves a half-written model that looks complete).

Prompt format (template "none"): the problem text followed by one newline, nothing else:

    "Tom has 23 apples and buys 45 more. How many apples does Tom have now?\n"

The model continues with one worked-solution line and then emits its eos token:

    "We add: 23 + 45 = 68. The answer is 68."            (most greedy answers: no box)
    "We add: 23 + 45 = 68. The answer is \\boxed{68}."    (what a strict grader accepts)

Tokenize prompts without special tokens (`tokenizer(prompt, add_special_tokens=False)`; the
tokenizer adds none anyway). eos is `<|endoftext|>`, pad is `<|pad|>`; generation_config.json
names the eos id so HF `generate` and megarl's rollout engine stop there. Completions are 22-27
tokens including eos; `max_new_tokens=40` (or 48) leaves room.

Grade with the strict boxed extraction (`megarl.rewards.grading.grade_batch(...,
extraction_mode="boxed")`, the default): only about a third of the pretraining solutions box the
answer, so the base model's greedy accuracy is low while its temperature-1 samples box often
enough for GRPO to learn the format quickly (measured numbers in megarl/demo/README.md).

The tokenizer is a small byte-level BPE trained locally with the `tokenizers` library on the
pretraining corpus, with digits always split into single tokens (so arithmetic is per digit)
and exact round trips for any text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from megarl.demo.toy_task import DEFAULT_BOXED_FRACTION, format_prompt, long_pretraining_examples, pretraining_examples
from megarl.runtime.cache import cache_root

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
TOY_MODEL_VERSION = 1  # bump when the recipe changes in a way the settings below do not capture


@dataclass(frozen=True)
class ToyModelSettings:
    """Everything that determines the toy model's weights (hashed into the cache directory name)."""

    steps: int = 1600
    seed: int = 0
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    boxed_fraction: float = DEFAULT_BOXED_FRACTION
    tokenizer_vocab_size: int = 512
    tokenizer_corpus_size: int = 4000
    hidden_size: int = 64
    intermediate_size: int = 192
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 256
    loss_on: str = "solution"  # "solution": loss on the worked solution and eos; "document": on every token
    # Share of chain problems in the pretraining corpus (megarl.demo.toy_task.long_problems): 0 is
    # the demo's toy-arith corpus; > 0 is the long-tailed variant (builtin:toy-arith-long), whose
    # batches are grouped by length so padding does not multiply the cost.
    chain_fraction: float = 0.0
    # Share of tool-integrated solutions (megarl.demo.toy_tool): > 0 is the tool demo's model
    # (builtin:toy-tool), pretrained on products of 3-4 digit numbers instead of word problems.
    tool_fraction: float = 0.0
    # Routed experts per layer: 0 is a dense Qwen2; > 0 a Qwen3-MoE (builtin:toy-arith-moe) whose
    # layers route each token to the top `experts_per_token` of `num_experts` SwiGLU experts of width
    # `moe_intermediate_size` (renormalized), pretrained with the router's load-balancing loss.
    num_experts: int = 0
    experts_per_token: int = 2
    moe_intermediate_size: int = 96
    router_aux_loss_coef: float = 0.01
    # torch intra-op threads while pretraining. 1, not 2: ops this small gain little from a
    # second thread, and on a busy 2-core machine two threads measured 3-10x slower per step
    # (see megarl/demo/README.md).
    threads: int = 1

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps={self.steps} must be >= 1")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} must be divisible by num_kv_heads={self.num_kv_heads}")
        if self.loss_on not in ("solution", "document"):
            raise ValueError(f"loss_on={self.loss_on!r} must be 'solution' or 'document'")
        if not 0.0 <= self.chain_fraction <= 1.0:
            raise ValueError(f"chain_fraction={self.chain_fraction} must be within [0, 1]")
        if self.num_experts and not 1 <= self.experts_per_token <= self.num_experts:
            raise ValueError(f"experts_per_token={self.experts_per_token} must be within [1, num_experts={self.num_experts}]")

    @property
    def name(self) -> str:
        """The built-in model name these settings belong to (and the cache directory's prefix)."""
        if self.tool_fraction > 0:
            return "toy-tool"
        if self.num_experts > 0:
            return "toy-arith-moe"
        return "toy-arith-long" if self.chain_fraction > 0 else "toy-arith"

    def cache_key(self) -> str:
        fields = dataclasses.asdict(self)
        fields.pop("threads")  # thread count changes speed, not the recipe
        if fields["chain_fraction"] == 0.0:  # added later: the demo model's key stays what it was
            fields.pop("chain_fraction")
        if fields["tool_fraction"] == 0.0:  # likewise
            fields.pop("tool_fraction")
        if fields["num_experts"] == 0:  # likewise: the dense models' keys ignore the MoE fields
            for name in ("num_experts", "experts_per_token", "moe_intermediate_size", "router_aux_loss_coef"):
                fields.pop(name)
        fields["version"] = TOY_MODEL_VERSION
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# Tokenizer


def build_tokenizer(corpus: Sequence[str], vocab_size: int = 512):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on `corpus`, digits split one per token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, padding_side="left"
    )


# ---------------------------------------------------------------------------------------------
# Model


def toy_model_config(settings: ToyModelSettings, vocab_size: int, eos_id: int, pad_id: int):
    """The HF config: a Qwen2, or with `num_experts` a Qwen3-MoE of the same shape (every layer sparse)."""
    from transformers import Qwen2Config, Qwen3MoeConfig

    shape = dict(
        vocab_size=vocab_size,
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_kv_heads,
        max_position_embeddings=settings.max_position_embeddings,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="float32",
    )
    if settings.num_experts == 0:
        return Qwen2Config(use_sliding_window=False, **shape)
    return Qwen3MoeConfig(
        head_dim=settings.hidden_size // settings.num_heads,
        attention_bias=False,
        num_experts=settings.num_experts,
        num_experts_per_tok=settings.experts_per_token,
        moe_intermediate_size=settings.moe_intermediate_size,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        router_aux_loss_coef=settings.router_aux_loss_coef,
        **shape,
    )


def _batch_tensors(
    tokenizer, examples: Sequence[tuple[str, str]], loss_on: str = "solution"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels) of prompt + solution + eos rows, right-padded.

    With loss_on="solution" the prompt tokens are context only (label -100).
    """
    rows, prompt_lengths = [], []
    for prompt, solution in examples:
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
        rows.append(prompt_ids + tokenizer.encode(solution, add_special_tokens=False) + [tokenizer.eos_token_id])
        prompt_lengths.append(len(prompt_ids))
    length = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, : len(row)] = torch.tensor(row)
        mask[index, : len(row)] = 1
        first_label = prompt_lengths[index] if loss_on == "solution" else 0
        labels[index, first_label : len(row)] = input_ids[index, first_label : len(row)]
    return input_ids, mask, labels


def pretraining_corpus(settings: ToyModelSettings) -> list[tuple[str, str]]:
    """The (prompt, solution) pairs of every pretraining batch, in batch order.

    With chain problems in the corpus, documents range from ~50 to ~450 tokens; batches are then
    made of documents of similar length (sorted within windows of 64 batches, batch order
    shuffled), so a batch's padding follows its own longest document, not the corpus's.
    """
    count = settings.steps * settings.batch_size
    if settings.tool_fraction > 0:
        from megarl.demo.toy_tool import pretraining_examples as tool_examples

        return tool_examples(count, settings.seed, settings.tool_fraction)
    if settings.chain_fraction == 0.0:
        return pretraining_examples(count, settings.seed, settings.boxed_fraction)
    import random

    examples = long_pretraining_examples(count, settings.seed, settings.boxed_fraction, settings.chain_fraction)
    window = 64 * settings.batch_size
    batches = []
    for start in range(0, count, window):
        chunk = sorted(examples[start:start + window], key=lambda pair: len(pair[0]) + len(pair[1]))
        batches.extend(chunk[i:i + settings.batch_size] for i in range(0, len(chunk), settings.batch_size))
    random.Random(f"toy-arith-long-batches:{settings.seed}").shuffle(batches)
    return [pair for batch in batches for pair in batch]


def _learning_rate(step: int, settings: ToyModelSettings) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def pretrain_toy_model(settings: ToyModelSettings, out_dir: Path, show_progress: bool = True) -> dict:
    """Train tokenizer and model from scratch on CPU and save them to out_dir; returns build stats."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    from megarl.monitoring.console import Progress

    threads_before = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        started = time.perf_counter()
        examples = pretraining_corpus(settings)
        corpus = [prompt + solution for prompt, solution in examples[: settings.tokenizer_corpus_size]]
        tokenizer = build_tokenizer(corpus, settings.tokenizer_vocab_size)
        config = toy_model_config(settings, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
        torch.manual_seed(settings.seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.train()
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=settings.learning_rate,
            betas=(0.9, 0.95),
        )
        losses: list[float] = []
        train_started = time.perf_counter()
        with Progress("pretraining toy model (once, then cached)", total=settings.steps, unit="steps",
                      enabled=show_progress) as progress:
            for step in range(settings.steps):
                batch = examples[step * settings.batch_size : (step + 1) * settings.batch_size]
                input_ids, mask, labels = _batch_tensors(tokenizer, batch, settings.loss_on)
                for group in optimizer.param_groups:
                    group["lr"] = _learning_rate(step, settings)
                # A MoE's loss includes the router's load-balancing loss (router_aux_loss_coef).
                moe = {"output_router_logits": True} if settings.num_experts > 0 else {}
                loss = model(input_ids=input_ids, attention_mask=mask, labels=labels, **moe).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                losses.append(loss.item())
                progress.update(1, detail=f"loss {sum(losses[-20:]) / len(losses[-20:]):.3f}")
        train_seconds = time.perf_counter() - train_started

        model.eval()
        model.generation_config = GenerationConfig(
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id
        )
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        stats = {
            "settings": dataclasses.asdict(settings),
            "cache_key": settings.cache_key(),
            "vocab_size": len(tokenizer),
            "parameters": sum(p.numel() for p in model.parameters()),
            "pretrain_seconds": round(train_seconds, 2),
            "total_seconds": round(time.perf_counter() - started, 2),
            "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
            "loss_curve": [  # mean loss of each block of 100 steps
                round(sum(losses[i : i + 100]) / len(losses[i : i + 100]), 4) for i in range(0, len(losses), 100)
            ],
            "torch_threads": settings.threads,
        }
        (out_dir / "toy_build.json").write_text(json.dumps(stats, indent=2) + "\n")
        return stats
    finally:
        torch.set_num_threads(threads_before)


def build_toy_model(
    cache_dir: Path | str | None = None,
    *,
    steps: int = ToyModelSettings.steps,
    seed: int = 0,
    show_progress: bool = True,
    **overrides,
) -> Path:
    """The toy base model's HF directory, pretrained on first use and cached afterwards.

    cache_dir is the cache root (default `megarl.runtime.cache.cache_root()`); the model
    lives in `<cache_dir>/<settings.name>-<hash of the settings>` (`toy-arith-...`, or
    `toy-arith-long-...` with chain problems in the corpus). Other `ToyModelSettings` fields can
    be overridden by keyword (e.g. `hidden_size=64` for a smaller model).
    """
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ToyModelSettings)}
    if unknown:
        raise TypeError(
            f"build_toy_model got unknown settings {sorted(unknown)}; "
            f"valid ones are {[f.name for f in dataclasses.fields(ToyModelSettings)]}"
        )
    settings = ToyModelSettings(steps=steps, seed=seed, **overrides)
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    final = root / f"{settings.name}-{settings.cache_key()}"
    if is_built(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        pretrain_toy_model(settings, staging, show_progress=show_progress)
        staging.chmod(0o755)  # mkdtemp makes it private; the finished model is an ordinary directory
        try:
            os.rename(staging, final)
        except OSError:
            if not is_built(final):  # not another builder winning the race: a real error
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final


def is_built(model_dir: Path) -> bool:
    """Whether `model_dir` holds a finished toy model build."""
    return all((model_dir / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json", "toy_build.json"))


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class ToyEvaluation:
    """Strict-grader results of a model on toy problems."""

    greedy_accuracy: float  # share of problems whose greedy answer is a correct \boxed{}
    greedy_boxed_rate: float  # share of greedy answers with a \boxed{}
    greedy_answer_accuracy: float  # share whose greedy final number is right, boxed or not
    pass_at_k: float | None  # share with >= 1 correct boxed answer among k samples at temperature 1
    sample_accuracy: float | None  # mean correctness of those samples (what GRPO's reward averages)
    sample_boxed_rate: float | None
    k: int
    problems: int


@torch.no_grad()
def generate_completions(
    model, tokenizer, prompts: Sequence[str], *, temperature: float = 0.0, max_new_tokens: int = 48, batch_size: int = 256
) -> list[str]:
    """Completions of prompts (already formatted) with HF generate, greedy when temperature == 0."""
    completions: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        encoded = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else dict(do_sample=False)
        output = model.generate(
            **encoded,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )
        completions.extend(tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True))
    return completions


def grade_completions(completions: Sequence[str], golds: Sequence[str]) -> list[tuple[bool, bool, bool]]:
    """(correct with a \\boxed{} answer, boxed, final number right) per completion, megarl's strict grader."""
    from megarl.rewards.extraction import last_number
    from megarl.rewards.grading import grade_batch

    results = grade_batch(list(completions), list(golds), template="none", extraction_mode="boxed")
    graded = []
    for completion, gold, result in zip(completions, golds, results):
        number = last_number(completion)
        graded.append((result.correct, result.answer_source == "boxed", number is not None and number == gold))
    return graded


def evaluate_toy_model(model_dir: Path | str, rows: Sequence[dict], *, k: int = 8, seed: int = 0, max_new_tokens: int = 48) -> ToyEvaluation:
    """Greedy accuracy, boxed rate and pass@k (temperature 1) of a model directory on toy rows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = [format_prompt(row["problem"]) for row in rows]
    golds = [row["answer"] for row in rows]
    greedy = grade_completions(generate_completions(model, tokenizer, prompts, max_new_tokens=max_new_tokens), golds)
    pass_at_k = sample_accuracy = sample_boxed = None
    if k > 0:
        torch.manual_seed(seed)
        repeated = [p for p in prompts for _ in range(k)]
        samples = grade_completions(
            generate_completions(model, tokenizer, repeated, temperature=1.0, max_new_tokens=max_new_tokens),
            [g for g in golds for _ in range(k)],
        )
        per_problem = [samples[i * k : (i + 1) * k] for i in range(len(rows))]
        pass_at_k = sum(any(s[0] for s in group) for group in per_problem) / len(rows)
        sample_accuracy = sum(s[0] for s in samples) / len(samples)
        sample_boxed = sum(s[1] for s in samples) / len(samples)
    return ToyEvaluation(
        greedy_accuracy=sum(g[0] for g in greedy) / len(rows),
        greedy_boxed_rate=sum(g[1] for g in greedy) / len(rows),
        greedy_answer_accuracy=sum(g[2] for g in greedy) / len(rows),
        pass_at_k=pass_at_k,
        sample_accuracy=sample_accuracy,
        sample_boxed_rate=sample_boxed,
        k=k,
        problems=len(rows),
    )


# ---------------------------------------------------------------------------------------------
# Command line: build (or reuse) the toy model and print its base-model table


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m megarl.demo.toy_model`: build or reuse the cached toy model, evaluate it, print a table."""
    import argparse

    from rich.console import Console
    from rich.table import Table

    from megarl.demo.toy_task import toy_problems

    parser = argparse.ArgumentParser(
        prog="python -m megarl.demo.toy_model",
        description="Build (once, cached) the CPU demo's toy base model and measure it on held-out problems.",
        epilog="example: python -m megarl.demo.toy_model --problems 200 --k 8 --json /tmp/toy_base.json",
    )
    parser.add_argument("--cache-dir", type=Path, default=None, 
                        help="cache root (default $MEGARL_CACHE_DIR, else $XDG_CACHE_HOME/megarl, else ~/.cache/megarl)")
    parser.add_argument("--steps", type=int, default=ToyModelSettings.steps, help="pretraining steps")
    parser.add_argument("--seed", type=int, default=0, help="pretraining seed")
    parser.add_argument("--problems", type=int, default=200, help="held-out problems to evaluate (0: skip)")
    parser.add_argument("--k", type=int, default=8, help="samples per problem at temperature 1 for pass@k")
    parser.add_argument("--json", type=Path, default=None, help="write the build stats and metrics here")
    args = parser.parse_args(argv)

    console = Console()
    model_dir = build_toy_model(args.cache_dir, steps=args.steps, seed=args.seed)
    stats = json.loads((model_dir / "toy_build.json").read_text())
    console.print(f"toy model: {model_dir}")
    result = {"model_dir": str(model_dir), "build": stats}
    table = Table(title="toy base model (strict \\boxed{} grading)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("parameters", f"{stats['parameters']:,}")
    table.add_row("pretraining seconds (when built)", f"{stats['pretrain_seconds']:.1f}")
    table.add_row("final pretraining loss", f"{stats['final_loss']:.3f}")
    if args.problems > 0:
        torch.set_num_threads(1)
        evaluation = evaluate_toy_model(model_dir, toy_problems("heldout", args.problems, seed=1), k=args.k)
        result["heldout"] = dataclasses.asdict(evaluation)
        table.add_row("held-out problems", str(evaluation.problems))
        table.add_row("greedy accuracy (boxed and right)", f"{100 * evaluation.greedy_accuracy:.1f}%")
        table.add_row("greedy boxed rate", f"{100 * evaluation.greedy_boxed_rate:.1f}%")
        table.add_row("greedy final number right (any format)", f"{100 * evaluation.greedy_answer_accuracy:.1f}%")
        if evaluation.k:
            table.add_row(f"pass@{evaluation.k} at temperature 1", f"{100 * evaluation.pass_at_k:.1f}%")
            table.add_row("sample accuracy at temperature 1", f"{100 * evaluation.sample_accuracy:.1f}%")
            table.add_row("sample boxed rate at temperature 1", f"{100 * evaluation.sample_boxed_rate:.1f}%")
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
