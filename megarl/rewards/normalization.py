"""LaTeX/text normalization of final answers, and parsing of plain numbers and structures.

`normalize_answer` maps the many ways of writing one answer to one string
(`\\dfrac12` → `\\frac{1}{2}`, `50\\%` → `50`, `\\text{ cm}` dropped, `x = 3` → `3`, ...).
`parse_number` reads numbers written as integers, decimals, scientific notation, fractions or
percentages, and never evaluates anything large (no power towers). `split_structure` splits
tuples, intervals, sets, bare lists and matrices into their elements. All of it is regex and
string work that runs in linear time, so it is safe to run in the trainer's own process.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# Words that follow a number as a unit and carry no meaning for the grade.
UNIT_WORDS = frozenset(
    """
    cm centimeter centimeters centimetre centimetres m meter meters metre metres km kilometer kilometers
    mm millimeter millimeters in inch inches ft foot feet yd yard yards mi mile miles
    sq square cubic units unit g gram grams kg kilogram kilograms lb lbs pound pounds oz ounce ounces
    s sec second seconds min minute minutes h hr hrs hour hours day days week weeks month months year years
    degree degrees deg rad radian radians mph kph l liter liters litre litres ml gallon gallons
    dollar dollars cent cents point points people students apples cups pages times percent
    hz khz mhz ghz nm ev kev mev j kj w kw v a mol k pa kpa atm n
    """.split()
)
# LaTeX commands that only change spacing or font.
SPACING_COMMANDS = re.compile(r"(?<!\\)\\[,;:! ]|\\quad|\\qquad|\\displaystyle|\\textstyle|\\limits|~")
SIZING_COMMANDS = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|big|Big|bigg|Bigg)(?![a-zA-Z])")
TEXT_COMMANDS = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|mbox|operatorname|boldsymbol|mathsf)\s*\{([^{}]*)\}")
DEGREE_MARKS = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\\degree")
FRAC_SHORTHAND = re.compile(r"\\frac\s*(\d)\s*(\d)")  # \frac12
FRAC_HALF_SHORTHAND = re.compile(r"\\frac\s*(\{[^{}]*\})\s*(\w)")  # \frac{1}2
FRAC_FIRST_SHORTHAND = re.compile(r"\\frac\s*(\w)\s*(\{)")  # \frac1{2}
SQRT_SHORTHAND = re.compile(r"\\sqrt\s*(\w)")  # \sqrt2
THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
VARIABLE_ASSIGNMENT = re.compile(r"^[a-zA-Z](?:_\{?\w+\}?)?\s*=(?!=)")
CHOICE_LETTER = re.compile(r"^\(?([A-Ea-e])\)?(?:[.:]|\s|$)")
TEXT_ONLY = re.compile(r"^[A-Za-z][A-Za-z \-']*$")
# A trailing unit after the number, matched on the reversed text: read forwards, the pattern
# `^(.*?\d)\s*([A-Za-z][A-Za-z ^{}0-9\-/]*)$` backtracks quadratically ("1a1a1a...,"); reversed
# and anchored at the start, it is one left-to-right pass.
REVERSED_TRAILING_UNIT = re.compile(r"([A-Za-z ^{}0-9\-/]*[A-Za-z])\s*\d")
DECIMAL = re.compile(r"-?\d+\.\d*")

NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
SCIENTIFIC_TIMES = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:\\times|\\cdot|\*|x)10\^\{?([+-]?\d+)\}?$")
POWER_OF_TEN = re.compile(r"^([+-]?)10\^\{?([+-]?\d+)\}?$")
LATEX_FRACTION = re.compile(r"^([+-]?)\\frac\{([+-]?(?:\d+\.?\d*|\.\d+))\}\{([+-]?(?:\d+\.?\d*|\.\d+))\}$")
SLASH_FRACTION = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))/([+-]?(?:\d+\.?\d*|\.\d+))$")
MAX_EXPONENT = 400  # 10^400 overflows a float anyway; larger powers are left to the symbolic path


def _strip_text_commands(text: str) -> str:
    # Apply repeatedly for nested \text{\textbf{...}}, bounded by the nesting depth.
    for _ in range(8):
        stripped = TEXT_COMMANDS.sub(r"\1", text)
        if stripped == text:
            break
        text = stripped
    return text


def _strip_trailing_unit(text: str) -> str:
    """Drop trailing unit words after a number: `5 cm` → `5`, `12 square units` → `12`."""
    match = REVERSED_TRAILING_UNIT.match(text[::-1])
    if not match:
        return text
    unit = match.group(1)[::-1]
    words = [w for w in re.split(r"[\s^{}0-9\-/]+", unit.lower()) if w]
    if words and all(w in UNIT_WORDS for w in words):
        return text[: len(text) - match.end() + 1]  # up to and including the number's last digit
    return text


def normalize_answer(answer: str) -> str:
    """Canonical string form of a final answer (LaTeX or text); linear time."""
    text = answer.strip()
    text = text.replace("\n", " ").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = text.replace("\\$", "").replace("$", "")
    text = SPACING_COMMANDS.sub(" ", text)
    text = SIZING_COMMANDS.sub("", text)
    text = _strip_text_commands(text)
    text = DEGREE_MARKS.sub("", text)
    text = text.replace("\\%", "").replace("%", "").replace("\\percent", "")
    text = text.replace("\\geqslant", "\\geq").replace("\\leqslant", "\\leq")
    text = re.sub(r"\\ge(?![a-zA-Z])", r"\\geq", text)
    text = re.sub(r"\\le(?![a-zA-Z])", r"\\leq", text)
    text = text.replace("\\infinity", "\\infty").replace("\\inf ", "\\infty ")
    text = text.strip().rstrip(".").strip()
    text = _strip_trailing_unit(text)
    # A leading single-variable assignment "x = 3" or "M=\frac{9}{32}" keeps only the value,
    # when it is the only "=" (equations such as y = 2x + 3 with two sides stay equations
    # for the symbolic path, which sees the unnormalized text).
    if text.count("=") == 1 and VARIABLE_ASSIGNMENT.match(text):
        text = text.split("=", 1)[1]
    text = FRAC_SHORTHAND.sub(r"\\frac{\1}{\2}", text)
    text = FRAC_FIRST_SHORTHAND.sub(r"\\frac{\1}\2", text)
    text = FRAC_HALF_SHORTHAND.sub(r"\\frac\1{\2}", text)
    text = SQRT_SHORTHAND.sub(r"\\sqrt{\1}", text)
    text = text.replace(" ", "")
    if THOUSANDS.match(text):
        text = text.replace(",", "")
    text = re.sub(r"(?<![\d}])\.(\d)", r"0.\1", text)  # .5 → 0.5
    # integer a/b → \frac{a}{b}
    slash = re.fullmatch(r"(-?)(\d+)/(\d+)", text)
    if slash:
        text = f"{slash.group(1)}\\frac{{{slash.group(2)}}}{{{slash.group(3)}}}"
    # Trailing zeros of decimals: 2.50 → 2.5, 3.0 → 3.
    if text.endswith("0") and DECIMAL.fullmatch(text):  # (not `\d*?0+`: quadratic in the zeros)
        text = text.rstrip("0").rstrip(".")
    return text


def has_percent(answer: str) -> bool:
    return "%" in answer or "\\percent" in answer


def choice_letter(answer: str) -> str | None:
    """The multiple-choice letter of an answer such as `(B)`, `B`, `\\text{(B)}`, `(B) 12`."""
    text = _strip_text_commands(answer.strip().replace("$", "")).strip()
    match = CHOICE_LETTER.match(text)
    if not match:
        return None
    rest = text[match.end() :].strip()
    # A bare lowercase letter with nothing after it is a variable, not a choice.
    if not rest and text == match.group(1) and match.group(1).islower():
        return None
    if rest and not text.startswith("("):
        return None
    return match.group(1).upper()


def parse_number(normalized: str) -> float | None:
    """The value of a normalized answer that is a plain number, else None.

    Accepts 12, -3.5, .5, 1e-5, 1.5\\times10^{-5}, 10^{6}, \\frac{3}{4}, -3/4. Never evaluates a
    power larger than 10^400 or anything with symbols.
    """
    text = normalized
    if not text or len(text) > 64:
        return None
    if NUMBER.match(text):
        return float(text)
    match = SCIENTIFIC_TIMES.match(text)
    if match:
        exponent = int(match.group(2))
        if abs(exponent) > MAX_EXPONENT:
            return None
        return float(match.group(1)) * 10.0**exponent
    match = POWER_OF_TEN.match(text)
    if match:
        exponent = int(match.group(2))
        if abs(exponent) > MAX_EXPONENT:
            return None
        return (-1.0 if match.group(1) == "-" else 1.0) * 10.0**exponent
    match = LATEX_FRACTION.match(text)
    if match:
        denominator = float(match.group(3))
        if denominator == 0:
            return None
        sign = -1.0 if match.group(1) == "-" else 1.0
        return sign * float(match.group(2)) / denominator
    match = SLASH_FRACTION.match(text)
    if match:
        denominator = float(match.group(2))
        return None if denominator == 0 else float(match.group(1)) / denominator
    return None


def numbers_close(a: float, b: float, rel_tol: float = 1e-4) -> bool:
    """Relative comparison (absolute near zero), as the Qwen2.5-Math grader does."""
    if math.isnan(a) or math.isnan(b):
        return False
    if a == 0 or b == 0:  # relative error is undefined at zero: allow rounding noise only
        return abs(a - b) <= 1e-12
    return math.isclose(a, b, rel_tol=rel_tol)


def text_words(normalized_raw: str) -> str | None:
    """Lower-cased words of a pure text answer (`Yes`, `no solution`), else None."""
    text = _strip_text_commands(normalized_raw.strip().replace("$", "")).strip().rstrip(".")
    if not TEXT_ONLY.match(text):
        return None
    words = text.lower().split()
    # Only real words: single letters and short symbol names are variables for sympy.
    if not any(len(w) >= 3 and w not in {"sin", "cos", "tan", "log", "exp", "sqrt", "pi"} for w in words):
        return None
    return " ".join(words)


@dataclass(frozen=True)
class Structure:
    """A bracketed or comma-separated answer split into elements.

    kind: "tuple" (a, b), "interval" with `left`/`right` brackets, "set" {a, b}, "list" a, b
    (bare, compared as an unordered multiset), "matrix" (rows of elements, flattened in
    `elements` with `shape`).
    """

    kind: str
    elements: tuple[str, ...]
    left: str = ""
    right: str = ""
    shape: tuple[int, int] = (0, 0)


def split_top_level(text: str, separator: str = ",") -> list[str]:
    """Split at separators that are not inside (), [], {}."""
    parts, depth, current = [], 0, []
    index = 0
    while index < len(text):
        char = text[index]
        if text.startswith("\\{", index) or text.startswith("\\}", index):
            depth += 1 if text[index + 1] == "{" else -1
            current.append(text[index : index + 2])
            index += 2
            continue
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if depth == 0 and text.startswith(separator, index):
            parts.append("".join(current))
            current = []
            index += len(separator)
            continue
        current.append(char)
        index += 1
    parts.append("".join(current))
    return parts


def _enclosing_brackets_match(inner: str) -> bool:
    """True when no bracket closes before the end in `inner` (the outer pair encloses all)."""
    depth = 0
    for char in inner:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


MATRIX = re.compile(r"^\\begin\{([pbvBV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}$")


def split_structure(normalized: str) -> Structure | None:
    """Split a normalized answer into a structure, or None if it is a single expression."""
    text = normalized
    matrix = MATRIX.match(text)
    if matrix:
        rows = [r for r in matrix.group(2).split("\\\\") if r.strip()]
        cells = [[c.strip() for c in row.split("&")] for row in rows]
        width = len(cells[0]) if cells else 0
        if not cells or any(len(row) != width for row in cells):
            return None
        return Structure("matrix", tuple(c for row in cells for c in row), shape=(len(cells), width))
    if text.startswith("\\{") and text.endswith("\\}") and _enclosing_brackets_match(text[2:-2]):
        return Structure("set", tuple(split_top_level(text[2:-2])), "{", "}")
    if len(text) >= 2 and text[0] in "([" and text[-1] in ")]" and _enclosing_brackets_match(text[1:-1]):
        elements = tuple(split_top_level(text[1:-1]))
        if len(elements) < 2:
            return None
        # (a, b) is a tuple or an open interval; [a, b), (a, b], [a, b] are intervals.
        kind = "tuple" if (text[0], text[-1]) == ("(", ")") else "interval"
        return Structure(kind, elements, text[0], text[-1])
    elements = split_top_level(text)
    if len(elements) >= 2 and all(e for e in elements):
        return Structure("list", tuple(elements))
    return None
