"""Whether an extracted answer equals a gold answer: a cheap decisive check, then symbolic.

`quick_equal` compares normalized strings, numbers (relative 1e-4, percentages x100 and
/100), multiple-choice letters, text words and the elements of tuples, intervals, sets and
matrices; it returns True or False when that settles it and None when only algebra can
(`\\frac{\\sqrt{3}}{3}` vs `\\frac{1}{\\sqrt{3}}`). It is pure string work, linear in
the answer's length and capped at MAX_ANSWER_CHARS (longer answers only compare as exact text),
so it is safe in the trainer's process. `symbolic_equal` parses both sides with HF math-verify (which uses sympy)
and can take unbounded time: call it only inside a grading worker (megarl.rewards.grading),
which runs it under a hard wall-clock limit.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re

from megarl.rewards.normalization import (
    Structure,
    choice_letter,
    has_percent,
    normalize_answer,
    numbers_close,
    parse_number,
    split_structure,
    text_words,
)

INTEGER = re.compile(r"^[+-]?\d+$")
# Answers longer than this are compared as normalized strings only: no real answer is that
# long (the longest shipped gold has 210 characters) and sympy on a huge input can take
# minutes or memory before any timer fires.
MAX_SYMBOLIC_CHARS = 1000
# Answers longer than this are not normalized at all, only compared as exact text: this caps
# the in-process work per answer (linear normalization of 256 KiB: under 0.1 s on one core)
# however long the model's answer is.
MAX_ANSWER_CHARS = 256 * 1024


def _numbers_verdict(pred_norm: str, gold_norm: str, pred_raw: str, gold_raw: str, rel_tol: float) -> bool | None:
    pred_value, gold_value = parse_number(pred_norm), parse_number(gold_norm)
    if pred_value is None or gold_value is None:
        return None
    if INTEGER.match(pred_norm) and INTEGER.match(gold_norm) and not (has_percent(pred_raw) or has_percent(gold_raw)):
        # Two integers are equal only exactly: a relative 1e-4 would accept 13536 for 13535.
        return int(pred_norm) == int(gold_norm)
    if numbers_close(pred_value, gold_value, rel_tol):
        return True
    if has_percent(pred_raw) or has_percent(gold_raw):
        return numbers_close(pred_value / 100, gold_value, rel_tol) or numbers_close(pred_value, gold_value / 100, rel_tol)
    return False


def _elements_verdict(pred: Structure, gold: Structure, rel_tol: float) -> bool | None:
    """Element-wise verdict of two structures: ordered for tuples/intervals/matrices."""
    unordered = {"set", "list"}
    if (pred.kind in unordered) != (gold.kind in unordered):
        return None  # e.g. a tuple against a bare list: let the symbolic path decide
    if len(pred.elements) != len(gold.elements):
        return False
    if pred.kind == "matrix" or gold.kind == "matrix":
        if pred.kind != gold.kind or pred.shape != gold.shape:
            return False
    if pred.kind == "interval" or gold.kind == "interval":
        if (pred.left, pred.right) != (gold.left, gold.right):
            return False
    if pred.kind not in unordered:
        verdicts = [quick_equal(p, g, rel_tol) for p, g in zip(pred.elements, gold.elements)]
        if any(v is False for v in verdicts):
            return False
        return True if all(verdicts) else None
    # Unordered: match every predicted element to a distinct gold element.
    remaining = list(gold.elements)
    undecided = False
    for element in pred.elements:
        verdicts = [quick_equal(element, g, rel_tol) for g in remaining]
        if True in verdicts:
            remaining.pop(verdicts.index(True))
        elif None in verdicts:
            undecided = True
        else:
            return False
    return None if undecided else True


# Short answers repeat a lot across a rollout (n samples per prompt): cache their verdicts.
CACHED_CHARS = 512


def quick_equal(pred: str, gold: str, rel_tol: float = 1e-4) -> bool | None:
    """True/False when string, numeric or structural comparison settles it, else None."""
    if len(pred) + len(gold) <= CACHED_CHARS:
        return _quick_equal_cached(pred, gold, rel_tol)
    return _quick_equal(pred, gold, rel_tol)


@functools.lru_cache(maxsize=65536)
def _quick_equal_cached(pred: str, gold: str, rel_tol: float) -> bool | None:
    return _quick_equal(pred, gold, rel_tol)


def _quick_equal(pred: str, gold: str, rel_tol: float) -> bool | None:
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return pred.strip() == gold.strip()
    pred_norm, gold_norm = normalize_answer(pred), normalize_answer(gold)
    if pred_norm == gold_norm:
        return True
    if len(pred_norm) > MAX_SYMBOLIC_CHARS or len(gold_norm) > MAX_SYMBOLIC_CHARS:
        return False
    if not pred_norm or not gold_norm:
        return False
    gold_letter = choice_letter(gold)
    if gold_letter is not None:
        pred_letter = choice_letter(pred)
        if pred_letter is not None:
            return pred_letter == gold_letter
    numeric = _numbers_verdict(pred_norm, gold_norm, pred, gold, rel_tol)
    if numeric is not None:
        return numeric
    pred_words, gold_words = text_words(pred), text_words(gold)
    if pred_words is not None and gold_words is not None:
        return pred_words == gold_words
    pred_structure, gold_structure = split_structure(pred_norm), split_structure(gold_norm)
    if pred_structure is not None and gold_structure is not None:
        return _elements_verdict(pred_structure, gold_structure, rel_tol)
    # A structure against a plain number can never be equal.
    if (pred_structure is not None and parse_number(gold_norm) is not None) or (
        gold_structure is not None and parse_number(pred_norm) is not None
    ):
        return False
    return None


# ---------------------------------------------------------------------------------------------
# Symbolic path (grading workers only)


@functools.lru_cache(maxsize=4096)
def _parse_math(answer: str):
    """math-verify parse of an answer wrapped in \\boxed{} (timeouts are the worker's job)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return parse(
        "\\boxed{" + answer + "}",
        extraction_config=[LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()],
        parsing_timeout=None,
    )


def _sympy_difference_is_zero(pred_parsed: list, gold_parsed: list) -> bool:
    """simplify(pred - gold) == 0 for expressions with free symbols.

    math-verify compares a gold made only of symbols (`x`, or a choice letter) as a string,
    so `2x - x` against `x` needs this algebraic check.
    """
    import sympy

    pred_expr, gold_expr = pred_parsed[0], gold_parsed[0]
    if not isinstance(pred_expr, sympy.Expr) or not isinstance(gold_expr, sympy.Expr):
        return False
    if not gold_expr.free_symbols or not pred_expr.free_symbols <= gold_expr.free_symbols:
        return False
    try:
        return sympy.simplify(pred_expr - gold_expr) == 0
    except Exception:  # noqa: BLE001  (sympy raises many types on odd input)
        return False


def _math_verify_equal(pred: str, gold: str) -> bool:
    from math_verify import verify

    gold_parsed, pred_parsed = _parse_math(gold), _parse_math(pred)
    if not gold_parsed or not pred_parsed:
        return False
    if verify(gold_parsed, pred_parsed, timeout_seconds=None):
        return True
    return _sympy_difference_is_zero(pred_parsed, gold_parsed)


def symbolic_equal(pred: str, gold: str, rel_tol: float = 1e-4) -> bool:
    """Full verdict: the quick check, then math-verify on the whole and element by element.

    Can take unbounded time on adversarial input: run it under a hard limit (grading workers).
    """
    quick = quick_equal(pred, gold, rel_tol)
    if quick is not None:
        return quick
    # math-verify normalizes units, \text, degrees etc. itself; give it the raw answers, and
    # our normalized forms as a second try (they differ e.g. in stripped "x =" assignments).
    if _math_verify_equal(pred, gold):
        return True
    pred_norm, gold_norm = normalize_answer(pred), normalize_answer(gold)
    if (pred_norm, gold_norm) != (pred, gold) and _math_verify_equal(pred_norm, gold_norm):
        return True
    pred_structure, gold_structure = split_structure(pred_norm), split_structure(gold_norm)
    if pred_structure is None or gold_structure is None:
        return False
    if len(pred_structure.elements) != len(gold_structure.elements):
        return False
    if _elements_verdict(pred_structure, gold_structure, rel_tol) is False:
        return False
    unordered = {"set", "list"}
    if pred_structure.kind in unordered and gold_structure.kind in unordered:
        # Pairwise verdicts (n^2 symbolic calls), then a perfect matching over the booleans.
        n = len(gold_structure.elements)
        equal = [[symbolic_equal(p, g, rel_tol) for g in gold_structure.elements] for p in pred_structure.elements]
        if n > 8:  # permutations explode; match greedily instead
            remaining = set(range(n))
            for row in equal:
                match = next((j for j in sorted(remaining) if row[j]), None)
                if match is None:
                    return False
                remaining.remove(match)
            return True
        return any(all(equal[i][j] for i, j in enumerate(order)) for order in itertools.permutations(range(n)))
    return all(symbolic_equal(p, g, rel_tol) for p, g in zip(pred_structure.elements, gold_structure.elements))


def any_gold_quick(pred: str, golds: list[str], rel_tol: float = 1e-4) -> bool | None:
    """quick_equal against several gold answers: True if any is equal, False if all differ."""
    verdicts = [quick_equal(pred, gold, rel_tol) for gold in golds]
    if True in verdicts:
        return True
    return False if all(v is False for v in verdicts) else None


def any_gold_symbolic(pred: str, golds: list[str], rel_tol: float = 1e-4) -> bool:
    """symbolic_equal against several gold answers (worker side)."""
    return any(symbolic_equal(pred, gold, rel_tol) for gold in golds)
