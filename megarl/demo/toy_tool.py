"""The tool demo's task: products of two 3-4 digit numbers, which the toy model cannot compute in its head.

    What is 4821 * 739?

A tiny two-layer model pretrained on these problems learns the shape of an answer (the number of digits,
the leading digits at best) but not the product: answering directly, it is almost never right. The
pretraining corpus (`pretraining_examples`) also holds a minority of tool-integrated solutions in the
ToRL format (megarl.rollout.multi_turn.TOOL_FORMATS["torl"]):

    ```python
    print(4821 * 739)
    ```
    ```output
    3562719
    ```
    The answer is \\boxed{3562719}.

so the base model sometimes writes the code block and, when the interpreter's output is in its context,
copies it into the box. With the interpreter (tool.enabled) those samples are right and GRPO raises the
share that call it; without it the model's own "output" is a guess and nothing is learned
(docs/tool_use.md has both runs, measured).

Splits: every (a, b) pair belongs to one split by a stable hash (pretrain 70 %, rl_train 20 %,
heldout 10 %), as in megarl.demo.toy_task, so held-out problems are never seen in pretraining or RL.
"""

from __future__ import annotations

import hashlib
import random

from megarl.demo.toy_task import SPLIT_BUCKETS, SPLITS, Split

OPERAND_MIN = 100
OPERAND_MAX = 9999
DEFAULT_TOOL_FRACTION = 0.25  # share of pretraining solutions that call the interpreter


def split_of(a: int, b: int) -> str:
    bucket = int.from_bytes(hashlib.sha256(f"toy-tool:{a}:{b}".encode()).digest()[:8], "big") % 100
    return next(split for split, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


def problem_text(a: int, b: int) -> str:
    return f"What is {a} * {b}?"


def tool_problems(split: Split, n: int, seed: int = 0) -> list[dict]:
    """n distinct problems of `split` as `{"id", "problem", "answer", "a", "b"}` rows (deterministic)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not a toy-task split; use one of {', '.join(SPLITS)}")
    rng = random.Random(f"toy-tool:{split}:{seed}")
    rows, seen = [], set()
    while len(rows) < n:
        a, b = rng.randint(OPERAND_MIN, OPERAND_MAX), rng.randint(OPERAND_MIN, OPERAND_MAX)
        if (a, b) in seen or split_of(a, b) != split:
            continue
        seen.add((a, b))
        rows.append({"id": f"toy-tool-{split}-{seed}-{len(rows)}", "problem": problem_text(a, b), "answer": str(a * b),
                     "a": a, "b": b})
    return rows


def tool_solution(row: dict) -> str:
    """The ToRL-format solution: the code, the interpreter's output as the rollout appends it, the answer."""
    return (f"```python\nprint({row['a']} * {row['b']})\n```\n```output\n{row['answer']}\n```\n"
            f"The answer is \\boxed{{{row['answer']}}}.")


def direct_solution(row: dict) -> str:
    return f"The answer is \\boxed{{{row['answer']}}}."


def pretraining_examples(n: int, seed: int = 0, tool_fraction: float = DEFAULT_TOOL_FRACTION) -> list[tuple[str, str]]:
    """n (prompt, solution) pairs of the pretrain split; a `tool_fraction` share solve with the interpreter."""
    if not 0.0 <= tool_fraction <= 1.0:
        raise ValueError(f"tool_fraction={tool_fraction} must be within [0, 1]")
    rng = random.Random(f"toy-tool-solutions:{seed}")
    return [(row["problem"] + "\n", tool_solution(row) if rng.random() < tool_fraction else direct_solution(row))
            for row in tool_problems("pretrain", n, seed)]
