"""Synthetic arithmetic word problems for the CPU demo: a deterministic generator with disjoint splits.

Each problem is one of a few word-problem templates (add or subtract) filled with a name, an
item and two 2-digit operands, e.g.

    Tom has 23 apples and buys 45 more. How many apples does Tom have now?

Rows look like the shipped datasets (`megarl/datasets/*.jsonl`): `{"id", "problem", "answer"}`.

Splits. The underlying problem is the pair (template, operands); the name and item are surface
decoration. Every (template, a, b) is assigned to exactly one split by a stable hash, so the
"heldout" problems are never seen, in any wording, in "pretrain" or "rl_train":

    split      share of (template, a, b) keys
    pretrain   70 %
    rl_train   20 %
    heldout    10 %

`toy_problems(split, n, seed)` is deterministic: the same arguments give the same rows on every
machine and Python version (it uses `random.Random(seed)` and a SHA-256 split hash, never
Python's salted `hash`). Within one call the (template, a, b) keys are distinct while the split
has enough of them (it has thousands), so the held-out set has no duplicates.

Worked solutions (`worked_solution`) are what the toy base model is pretrained on: one line of
arithmetic, then the answer, either boxed ("The answer is \\boxed{68}.") or plain ("The answer
is 68."). The pretraining corpus boxes only a minority of answers (`DEFAULT_BOXED_FRACTION`), so
the base model's greedy answers are mostly unboxed and fail a strict `\\boxed{}` grader, while
sampling at temperature 1 still boxes a fair share of them: the lever that RL pulls first.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Literal, Sequence

Split = Literal["pretrain", "rl_train", "heldout"]
SPLITS: tuple[str, ...] = ("pretrain", "rl_train", "heldout")
# Buckets of the split hash (0..99) that belong to each split.
SPLIT_BUCKETS: dict[str, range] = {"pretrain": range(0, 70), "rl_train": range(70, 90), "heldout": range(90, 100)}

OPERAND_MIN = 10
OPERAND_MAX = 99
DEFAULT_BOXED_FRACTION = 0.3

NAMES = ("Tom", "Anna", "Ben", "Lily", "Sam", "Mia", "Max", "Zoe", "Leo", "Ella", "Jack", "Ruby")
ITEMS = ("apples", "books", "coins", "pens", "cards", "shells", "stamps", "marbles", "stickers", "cookies")


@dataclass(frozen=True)
class Template:
    """One word-problem pattern; `operation` is "+" or "-" (for "-", a > b)."""

    key: str
    operation: str
    text: str  # format fields: name, item, a, b


TEMPLATES: tuple[Template, ...] = (
    Template("buys", "+", "{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?"),
    Template("gift", "+", "{name} had {a} {item}. A friend gave {name} {b} more. How many {item} does {name} have?"),
    Template("total", "+", "There are {a} {item} in a box and {b} {item} in a bag. How many {item} are there in total?"),
    Template("gives", "-", "{name} has {a} {item} and gives away {b}. How many {item} does {name} have left?"),
    Template("sold", "-", "A shop had {a} {item} and sold {b} of them. How many {item} does the shop have left?"),
    Template("lost", "-", "{name} had {a} {item} and lost {b}. How many {item} are left?"),
)
TEMPLATE_BY_KEY = {template.key: template for template in TEMPLATES}


def split_of(template_key: str, a: int, b: int) -> str:
    """The split that owns the underlying problem (template, a, b)."""
    digest = hashlib.sha256(f"{template_key}:{a}:{b}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    for split, buckets in SPLIT_BUCKETS.items():
        if bucket in buckets:
            return split
    raise AssertionError(f"bucket {bucket} belongs to no split")  # the ranges cover 0..99


def answer_of(template: Template, a: int, b: int) -> int:
    return a + b if template.operation == "+" else a - b


def _keys_of_split(split: str) -> list[tuple[str, int, int]]:
    keys = []
    for template in TEMPLATES:
        for a in range(OPERAND_MIN, OPERAND_MAX + 1):
            for b in range(OPERAND_MIN, OPERAND_MAX + 1):
                if template.operation == "-" and a <= b:
                    continue
                if split_of(template.key, a, b) == split:
                    keys.append((template.key, a, b))
    return keys


_KEYS_CACHE: dict[str, list[tuple[str, int, int]]] = {}


def split_keys(split: str) -> list[tuple[str, int, int]]:
    """All (template, a, b) keys of a split, in a fixed order."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not a toy-task split; use one of {', '.join(SPLITS)}")
    if split not in _KEYS_CACHE:
        _KEYS_CACHE[split] = _keys_of_split(split)
    return _KEYS_CACHE[split]


def render_problem(template_key: str, a: int, b: int, name: str, item: str) -> str:
    return TEMPLATE_BY_KEY[template_key].text.format(name=name, item=item, a=a, b=b)


def toy_problems(split: Split, n: int, seed: int = 0) -> list[dict]:
    """n problems of `split` as `{"id", "problem", "answer", "template", "a", "b"}` rows.

    The first three fields are the dataset schema; the others say which underlying problem it is.
    Keys are drawn without replacement (distinct problems) until the split runs out, then again.
    """
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    keys = split_keys(split)
    rng = random.Random(f"toy-arith:{split}:{seed}")
    rows: list[dict] = []
    while len(rows) < n:
        order = list(range(len(keys)))
        rng.shuffle(order)
        for index in order[: n - len(rows)]:
            template_key, a, b = keys[index]
            name, item = rng.choice(NAMES), rng.choice(ITEMS)
            rows.append(
                {
                    "id": f"toy-{split}-{seed}-{len(rows)}",
                    "problem": render_problem(template_key, a, b, name, item),
                    "answer": str(answer_of(TEMPLATE_BY_KEY[template_key], a, b)),
                    "template": template_key,
                    "a": a,
                    "b": b,
                }
            )
    return rows


def worked_solution(row: dict, boxed: bool) -> str:
    """The worked solution of a toy problem row: one arithmetic line per operation, then the (boxed or
    plain) answer. One-step rows read "We add: 23 + 45 = 68. The answer is 68."; chain rows (the
    long-tailed variant) "Step by step: 23 + 45 = 68. 68 - 12 = 56. The answer is 56."."""
    answer = row["answer"]
    final = f"\\boxed{{{answer}}}" if boxed else answer
    if row["template"] == "chain":
        total, lines = row["a"], []
        for op, b in row["ops"]:
            after = total + b if op == "+" else total - b
            lines.append(f"{total} {op} {b} = {after}.")
            total = after
        return f"Step by step: {' '.join(lines)} The answer is {final}."
    template = TEMPLATE_BY_KEY[row["template"]]
    verb = "We add" if template.operation == "+" else "We subtract"
    return f"{verb}: {row['a']} {template.operation} {row['b']} = {answer}. The answer is {final}."


def format_prompt(problem: str) -> str:
    """The prompt the toy model answers: the problem text, then a newline (template "none")."""
    return problem + "\n"


def pretraining_examples(n: int, seed: int = 0, boxed_fraction: float = DEFAULT_BOXED_FRACTION) -> list[tuple[str, str]]:
    """n pretraining (prompt, worked solution) pairs; a `boxed_fraction` share box the answer."""
    if not 0.0 <= boxed_fraction <= 1.0:
        raise ValueError(f"boxed_fraction={boxed_fraction} must be within [0, 1]")
    rng = random.Random(f"toy-arith-boxing:{seed}")
    return [
        (format_prompt(row["problem"]), worked_solution(row, boxed=rng.random() < boxed_fraction))
        for row in toy_problems("pretrain", n, seed)
    ]


def pretraining_documents(n: int, seed: int = 0, boxed_fraction: float = DEFAULT_BOXED_FRACTION) -> list[str]:
    """The pretraining examples as plain documents, prompt followed by its worked solution."""
    return [prompt + solution for prompt, solution in pretraining_examples(n, seed, boxed_fraction)]


# ---------------------------------------------------------------------------------------------
# The long-tailed variant ("toy-arith-long"): most problems as above, some a chain of many steps


LONG_TASK_SEED_TAG = "toy-arith-long"
DEFAULT_CHAIN_FRACTION = 0.3  # share of toy-arith-long problems that are chains
CHAIN_STEPS_MIN = 2
CHAIN_STEPS_MAX = 24
CHAIN_TOTAL_MAX = 999  # running totals stay within 0..999 (at most three digits)
CHAIN_VERBS = {"+": ("buys {b} more", "finds {b}", "gets {b} more"), "-": ("gives away {b}", "loses {b}", "sells {b}")}


def chain_steps(rng: random.Random) -> int:
    """Operations in one chain problem: log-uniform over CHAIN_STEPS_MIN..CHAIN_STEPS_MAX.

    Log-uniform makes the tail long: half the chains have at most ~7 steps, one in twelve has
    20 or more, so response lengths spread over an order of magnitude as zero-RL's do.
    """
    return int(math.exp(rng.uniform(math.log(CHAIN_STEPS_MIN), math.log(CHAIN_STEPS_MAX + 1))))


def chain_key(start: int, ops: Sequence[tuple[str, int]]) -> str:
    return "chain:" + str(start) + "".join(f"{op}{b}" for op, b in ops)


def split_of_chain(start: int, ops: Sequence[tuple[str, int]]) -> str:
    """The split that owns a chain problem (by the same hash buckets as the one-step problems)."""
    digest = hashlib.sha256(chain_key(start, ops).encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    return next(split for split, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


def _random_chain(rng: random.Random) -> tuple[int, list[tuple[str, int]]]:
    total = start = rng.randint(OPERAND_MIN, OPERAND_MAX)
    ops = []
    for _ in range(chain_steps(rng)):
        b = rng.randint(OPERAND_MIN, OPERAND_MAX)
        can_add, can_subtract = total + b <= CHAIN_TOTAL_MAX, total - b >= 0
        op = "+" if can_add and (not can_subtract or rng.random() < 0.5) else "-"
        total = total + b if op == "+" else total - b
        ops.append((op, b))
    return start, ops


def chain_answer(start: int, ops: Sequence[tuple[str, int]]) -> int:
    total = start
    for op, b in ops:
        total = total + b if op == "+" else total - b
    return total


def render_chain(start: int, ops: Sequence[tuple[str, int]], name: str, item: str, rng: random.Random) -> str:
    actions = ", ".join(rng.choice(CHAIN_VERBS[op]).format(b=b) for op, b in ops)
    return f"{name} has {start} {item}. Then {name} {actions}. How many {item} does {name} have now?"


def long_problems(split: Split, n: int, seed: int = 0, chain_fraction: float = DEFAULT_CHAIN_FRACTION) -> list[dict]:
    """n rows of the long-tailed variant: a `chain_fraction` share are chain problems, the rest
    one-step problems of `toy_problems`' kind (drawn from the same split's keys).

    A chain row has `template` "chain", `a` its start and `ops` its [operation, operand] pairs,
    e.g. "Tom has 23 apples. Then Tom buys 45 more, gives away 12. How many apples does Tom have
    now?"; its worked solution is one line per operation (see `worked_solution`), so its length
    grows with the number of operations. Chains are assigned to splits by a hash of the chain,
    exactly as the one-step problems are, so held-out chains never occur in pretraining or RL.
    Deterministic in (split, n, seed, chain_fraction); chain problems are distinct within a call.
    """
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    if not 0.0 <= chain_fraction <= 1.0:
        raise ValueError(f"chain_fraction={chain_fraction} must be within [0, 1]")
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not a toy-task split; use one of {', '.join(SPLITS)}")
    rng = random.Random(f"{LONG_TASK_SEED_TAG}:{split}:{seed}")
    is_chain = [rng.random() < chain_fraction for _ in range(n)]
    short_rows = iter(toy_problems(split, n - sum(is_chain), seed=seed))
    rows: list[dict] = []
    seen: set[str] = set()
    for index, chain in enumerate(is_chain):
        if not chain:
            row = dict(next(short_rows))
        else:
            while True:
                start, ops = _random_chain(rng)
                key = chain_key(start, ops)
                if key not in seen and split_of_chain(start, ops) == split:
                    break
            seen.add(key)
            name, item = rng.choice(NAMES), rng.choice(ITEMS)
            row = {"problem": render_chain(start, ops, name, item, rng), "answer": str(chain_answer(start, ops)),
                   "template": "chain", "a": start, "ops": [[op, b] for op, b in ops]}
        row["id"] = f"toy-long-{split}-{seed}-{index}"
        rows.append({"id": row.pop("id"), **row})
    return rows


def long_pretraining_examples(
    n: int, seed: int = 0, boxed_fraction: float = DEFAULT_BOXED_FRACTION, chain_fraction: float = DEFAULT_CHAIN_FRACTION
) -> list[tuple[str, str]]:
    """n pretraining (prompt, worked solution) pairs of the long-tailed variant."""
    if not 0.0 <= boxed_fraction <= 1.0:
        raise ValueError(f"boxed_fraction={boxed_fraction} must be within [0, 1]")
    rng = random.Random(f"toy-arith-long-boxing:{seed}")
    return [
        (format_prompt(row["problem"]), worked_solution(row, boxed=rng.random() < boxed_fraction))
        for row in long_problems("pretrain", n, seed, chain_fraction)
    ]
