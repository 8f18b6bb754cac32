"""Final-answer extraction from model responses: `\\boxed{}`, "the answer is", last number, r1 tags.

Every function here is linear in the length of the response (no backtracking regexes over
the whole text), so a 1 MB response or deeply nested braces cost milliseconds, not minutes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# Which fallbacks to try after `\boxed{}`: "boxed" only (SimpleRL's rule: no box, no answer),
# "answer_is" adds "the answer is ...", "last_number" adds the last number in the text.
ExtractionMode = Literal["boxed", "answer_is", "last_number"]
FallbackOrder: dict[str, tuple[str, ...]] = {
    "boxed": ("boxed",),
    "answer_is": ("boxed", "answer_is"),
    "last_number": ("boxed", "answer_is", "last_number"),
}

ANSWER_IS_PATTERN = re.compile(r"(?:final answer|the answer)\s*(?:is|:)\s*", re.IGNORECASE)
NUMBER_PATTERN = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
R1_ANSWER_OPEN = "<answer>"
R1_ANSWER_CLOSE = "</answer>"
R1_THINK_CLOSE = "</think>"


@dataclass(frozen=True)
class ExtractedAnswer:
    """An answer taken out of a response, with where it came from."""

    text: str | None  # None: no answer found
    source: str  # "boxed", "answer_is", "last_number", "r1_answer" or "none"


BRACE_TOKEN = re.compile(r"\\.|[{}]", re.DOTALL)
BOX_COMMAND_PATTERN = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")


def _brace_pairs(text: str) -> dict[int, int]:
    """Index of each '{' -> index of its matching '}' (escaped braces skipped); one pass."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for match in BRACE_TOKEN.finditer(text):
        token = match.group(0)
        if token == "{":
            stack.append(match.start())
        elif token == "}" and stack:
            pairs[stack.pop()] = match.start()
    return pairs


def last_boxed_content(text: str) -> str | None:
    """Content of the last non-empty `\\boxed{...}` or `\\fbox{...}` with balanced braces.

    Also accepts `\\boxed 5` (a single token after a space), as Hendrycks' MATH grader does.
    Unclosed or empty boxes are skipped in favour of an earlier one. Linear time: the braces
    are matched in one pass however many boxes there are.
    """
    boxes = [m.end() for m in BOX_COMMAND_PATTERN.finditer(text)]
    if not boxes:
        return None
    pairs: dict[int, int] | None = None
    for after in reversed(boxes):
        if after < len(text) and text[after] == "{":
            if pairs is None:
                pairs = _brace_pairs(text)
            close = pairs.get(after)
            if close is not None and text[after + 1 : close].strip():
                return text[after + 1 : close]
        elif after < len(text) and text[after] == " ":
            token = text[after + 1 : after + 200].split("$", 1)[0].split(None, 1)
            if token:
                return token[0]
    return None


def answer_after_phrase(text: str) -> str | None:
    """Text after the last "the answer is" / "final answer:", up to the end of its sentence."""
    last = None
    for match in ANSWER_IS_PATTERN.finditer(text):
        last = match
    if last is None:
        return None
    rest = text[last.end() :].strip()
    line = rest.split("\n", 1)[0].strip()
    # A sentence ends at ". " or at the end of the line; keep decimals like 3.5 intact.
    sentence_end = re.search(r"\.(?:\s|$)", line)
    if sentence_end:
        line = line[: sentence_end.start()]
    line = line.strip().strip("$").strip()
    boxed = last_boxed_content(line)
    return boxed if boxed is not None else (line or None)


def last_number(text: str) -> str | None:
    """The last number in the text (integers, decimals, thousands separators, a/b)."""
    # Scan only the tail: the last number is near the end, and this bounds the cost.
    tail = text[-2000:]
    found = None
    for match in NUMBER_PATTERN.finditer(tail):
        found = match.group(0)
    return found.replace(",", "") if found else None


def extract_answer(text: str, mode: ExtractionMode = "boxed") -> ExtractedAnswer:
    """Final answer of a plain or boxed response, trying the fallbacks that `mode` allows."""
    if mode not in FallbackOrder:
        raise ValueError(f"unknown extraction mode {mode!r}; use one of {sorted(FallbackOrder)}")
    for source in FallbackOrder[mode]:
        if source == "boxed":
            found = last_boxed_content(text)
        elif source == "answer_is":
            found = answer_after_phrase(text)
        else:
            found = last_number(text)
        if found is not None and found.strip():
            return ExtractedAnswer(found.strip(), source)
    return ExtractedAnswer(None, "none")


def r1_answer_block(text: str) -> str | None:
    """Content of the last `<answer>...</answer>` block of an r1-template response.

    When the rollout stopped on the `</answer>` stop string (trimmed), the block runs to the end.
    """
    start = text.rfind(R1_ANSWER_OPEN)
    if start < 0:
        return None
    body_start = start + len(R1_ANSWER_OPEN)
    end = text.find(R1_ANSWER_CLOSE, body_start)
    return text[body_start:end] if end >= 0 else text[body_start:]


def extract_r1_answer(text: str, mode: ExtractionMode = "boxed") -> ExtractedAnswer:
    """Answer of an r1 response: the `<answer>` block, with a `\\boxed{}` inside preferred."""
    block = r1_answer_block(text)
    if block is None:
        return ExtractedAnswer(None, "none")
    boxed = last_boxed_content(block)
    content = boxed if boxed is not None else block
    content = content.strip().strip("$").strip()
    return ExtractedAnswer(content, "r1_answer") if content else ExtractedAnswer(None, "none")


def r1_format_ok(text: str) -> bool:
    """True when a response to the r1 prompt (which ends in `<think>`) has the r1 shape.

    Shape: reasoning, `</think>`, whitespace, `<answer>` answer `</answer>` (closing tag optional
    when the stop string trimmed it), nothing after; exactly one of each tag.
    """
    if text.count(R1_THINK_CLOSE) != 1 or text.count(R1_ANSWER_OPEN) != 1 or text.count("<think>") > 0:
        return False
    if text.count(R1_ANSWER_CLOSE) > 1:
        return False
    reasoning, _, rest = text.partition(R1_THINK_CLOSE)
    if not reasoning.strip():
        return False
    rest = rest.strip()
    if not rest.startswith(R1_ANSWER_OPEN):
        return False
    body = rest[len(R1_ANSWER_OPEN) :]
    if R1_ANSWER_CLOSE in body:
        body, _, trailing = body.partition(R1_ANSWER_CLOSE)
        if trailing.strip():
            return False
    return bool(body.strip())


def is_truncated(finish_reason: object) -> bool:
    """True when a rollout's finish reason says it hit the length limit.

    Accepts SGLang's `{"type": "length", ...}`, OpenAI's `"length"`, or None (not truncated).
    """
    if finish_reason is None:
        return False
    if isinstance(finish_reason, dict):
        return finish_reason.get("type") == "length"
    return str(finish_reason) == "length"
