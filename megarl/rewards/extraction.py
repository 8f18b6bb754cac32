"""Final-answer extraction from model responses: `\\boxed{}`, "the answer is", last number, r1 tags.

Extraction modes (`reward.extraction`, `megarl grade --extraction`):
- "boxed": the last `\\boxed{}` only (strict: no box, no answer). Dr. GRPO's `boxed_reward_fn`
  (sail-sg/oat `oat/utils/math_grader.py`) and the CPU demo use it.
- "qwen-math": Qwen2.5-Math's `extract_answer` order (QwenLM/Qwen2.5-Math
  `evaluation/parser.py`, used with `data_name="math"` by SimpleRL-Zoo's reward
  `verl/utils/reward_score/hf_math_verify.py` and SimpleRL v0's `experience_maker.py`):
  Minerva's "final answer is $...$. I hope", else the last box (an unclosed box runs to the
  end), else everything after the last "the answer is" / "final answer is", else the last
  number (a GSM8K-style `#### 72` ends on its number).
- "answer_is", "last_number": megarl's own fallbacks after the box (the sentence after "the
  answer is", then the last number).

Every function here is linear in the length of the response (no backtracking regexes over
the whole text), so a 1 MB response or deeply nested braces cost milliseconds, not minutes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

from megarl.rewards.normalization import normalize_answer

# Which fallbacks to try after `\boxed{}`: "boxed" only (SimpleRL's rule: no box, no answer),
# "answer_is" adds "the answer is ...", "last_number" adds the last number in the text.
ExtractionMode = Literal["boxed", "qwen-math", "answer_is", "last_number"]
EXTRACTION_MODES: tuple[str, ...] = get_args(ExtractionMode)
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


# Qwen2.5-Math's extraction: the phrases it looks for, its number pattern, and the end-of-text
# markers SimpleRL cuts the response at before extracting.
QWEN_MINERVA_OPEN, QWEN_MINERVA_CLOSE = "final answer is $", "$. I hope"
QWEN_ANSWER_PHRASES = ("he answer is", "final answer is")
QWEN_CHINESE_PHRASE = "答案是"
QWEN_NUMBER_PATTERN = re.compile(r"-?\d*\.?\d+")
QWEN_END_MARKERS = ("</s>", "<|im_end|>", "<|endoftext|>")
QWEN_NEWLINE_RUN = re.compile(r"\n\s*")


def _qwen_box_content(after_box: str) -> str:
    """What follows the last "boxed": the brace group (to the end of the text when unclosed), or
    for `\\boxed 7$` the text up to the next `$`."""
    if not after_box.startswith("{"):
        return after_box.split("$", 1)[0].strip()
    depth, end = 1, len(after_box)
    for index in range(1, len(after_box)):
        char = after_box[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                end = index
                break
    return after_box[1:end]


def qwen_math_answer(text: str) -> ExtractedAnswer:
    """Qwen2.5-Math's answer extraction (`evaluation/parser.py` `extract_answer`, data_name="math").

    The source says which rule fired: "minerva", "boxed", "answer_is", "last_number" or "none".
    An empty box is an empty answer (no fallback), as upstream.
    """
    for marker in QWEN_END_MARKERS:
        if marker in text:
            text = text.split(marker, 1)[0].strip()
    text = text.replace("\u043a\u0438", "")
    if QWEN_MINERVA_OPEN in text and QWEN_MINERVA_CLOSE in text:
        found, source = text.split(QWEN_MINERVA_OPEN, 1)[1].split(QWEN_MINERVA_CLOSE, 1)[0].strip(), "minerva"
    elif "boxed" in text:
        found, source = _qwen_box_content(text[text.rindex("boxed") + len("boxed"):]), "boxed"
    elif any(phrase in text for phrase in QWEN_ANSWER_PHRASES):
        phrase = next(phrase for phrase in QWEN_ANSWER_PHRASES if phrase in text)
        found, source = text[text.rindex(phrase) + len(phrase):].strip(), "answer_is"
    elif QWEN_CHINESE_PHRASE in text:
        found, source = text.split(QWEN_CHINESE_PHRASE, 2)[1].strip().split("\n\n", 1)[0].strip(), "answer_is"
    else:
        numbers = QWEN_NUMBER_PATTERN.findall(text.replace(",", ""))
        found, source = (numbers[-1], "last_number") if numbers else ("", "none")
    found = QWEN_NEWLINE_RUN.sub("", found)
    found = found[1:] if found.startswith(":") else found
    found = found[:-1] if found.endswith(".") else found
    found = found[:-1] if found.endswith("/") else found
    # Upstream normalizes the prediction (`strip_string`: units, `\\text`, spaces removed) before
    # comparing, so "42. Let me check" stays one token and is wrong, as it is there.
    found = normalize_answer(found) if found.strip() else ""
    return ExtractedAnswer(found or None, source)


def extract_answer(text: str, mode: ExtractionMode = "boxed") -> ExtractedAnswer:
    """Final answer of a plain or boxed response, trying the fallbacks that `mode` allows."""
    if mode == "qwen-math":
        return qwen_math_answer(text)
    if mode not in FallbackOrder:
        raise ValueError(f"unknown extraction mode {mode!r}; use one of {', '.join(EXTRACTION_MODES)}")
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
