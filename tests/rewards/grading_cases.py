"""The grader's case table: (category, gold, response, expected verdict, template).

Hand-written to cover what model responses and gold answers really look like on GSM8K,
MATH, Minerva, OlympiadBench, AIME and AMC, plus adversarial input. Gold answers are written
the way the shipped data writes them. `B(x)` wraps an answer the way a model writes it.
"""

from __future__ import annotations


def B(answer: str) -> str:
    """A model response whose final answer is `answer` in a \\boxed{}."""
    return f"Let me work through this step by step.\nSo the result follows.\nThe final answer is $\\boxed{{{answer}}}$."


def R1(answer: str, reasoning: str = "First compute the sum, then simplify.") -> str:
    """A response to the r1 prompt (the prompt ends in <think>)."""
    return f" {reasoning} </think> <answer> {answer} </answer>"


CASES: list[tuple[str, str, str, bool, str]] = [
    # --- integers and plain numbers ---------------------------------------------------------
    ("integer", "18", B("18"), True, "qwen-boxed"),
    ("integer", "18", B("17"), False, "qwen-boxed"),
    ("integer", "18", B("18.0"), True, "qwen-boxed"),
    ("integer", "18", B("018"), True, "qwen-boxed"),
    ("integer", "-3", B("-3"), True, "qwen-boxed"),
    ("integer", "-3", B("3"), False, "qwen-boxed"),
    ("integer", "1000", B("1,000"), True, "qwen-boxed"),
    ("integer", "11,\\! 111,\\! 111,\\! 100", B("11111111100"), True, "qwen-boxed"),
    ("integer", "1000000", B("10^6"), True, "qwen-boxed"),
    ("integer", "0", B("0"), True, "qwen-boxed"),
    ("integer", "13535", B("13536"), False, "qwen-boxed"),  # integers compare exactly, not to 1e-4
    ("integer", "10,\\!080", B("10081"), False, "qwen-boxed"),
    ("integer", "\\$32,\\!348", B("32348"), True, "qwen-boxed"),
    ("integer", "0", B("-0"), True, "qwen-boxed"),
    ("integer", "204", B("204"), True, "qwen-boxed"),
    ("integer", "204", B("2 0 4"), True, "qwen-boxed"),
    ("decimal", "0.5", B(".5"), True, "qwen-boxed"),
    ("decimal", "2.50", B("2.5"), True, "qwen-boxed"),
    ("decimal", "3.14159", B("3.1416"), True, "qwen-boxed"),  # relative 1e-4
    ("decimal", "3.14159", B("3.14"), False, "qwen-boxed"),
    ("decimal", "0.10", B("0.1"), True, "qwen-boxed"),
    ("decimal", "9.5", B("9.50"), True, "qwen-boxed"),
    ("decimal", "46.08", B("46.1"), False, "qwen-boxed"),
    # --- fractions ------------------------------------------------------------------------------
    ("fraction", "\\frac{1}{2}", B("\\frac12"), True, "qwen-boxed"),
    ("fraction", "\\frac{1}{2}", B("\\dfrac{1}{2}"), True, "qwen-boxed"),
    ("fraction", "\\frac{1}{2}", B("\\tfrac{1}{2}"), True, "qwen-boxed"),
    ("fraction", "\\frac{1}{2}", B("1/2"), True, "qwen-boxed"),
    ("fraction", "\\frac{1}{2}", B("0.5"), True, "qwen-boxed"),
    ("fraction", "\\frac{1}{2}", B("\\frac{2}{4}"), True, "qwen-boxed"),
    ("fraction", "\\frac{1}{2}", B("\\frac{1}{3}"), False, "qwen-boxed"),
    ("fraction", "-\\frac{3}{8}", B("-\\frac{3}{8}"), True, "qwen-boxed"),
    ("fraction", "-\\frac{3}{8}", B("\\frac{-3}{8}"), True, "qwen-boxed"),
    ("fraction", "-\\frac{3}{8}", B("\\frac{3}{8}"), False, "qwen-boxed"),
    ("fraction", "\\frac{270}7\\text{ degrees}", B("\\frac{270}{7}"), True, "qwen-boxed"),
    ("fraction", "\\frac{35}{64}", B("0.546875"), True, "qwen-boxed"),
    ("fraction", "\\frac{9}{100}", B("0.09"), True, "qwen-boxed"),
    ("fraction", "\\frac{1}{16}", B("\\frac{1}{8}"), False, "qwen-boxed"),
    ("fraction", "\\frac{x+1}{2}", B("\\frac{1+x}{2}"), True, "qwen-boxed"),
    ("fraction", "\\frac{x+1}{2}", B("\\frac{x}{2}+\\frac{1}{2}"), True, "qwen-boxed"),
    # --- radicals ------------------------------------------------------------------------------
    ("radical", "\\sqrt{2}", B("\\sqrt2"), True, "qwen-boxed"),
    ("radical", "\\sqrt{2}", B("\\frac{2}{\\sqrt{2}}"), True, "qwen-boxed"),
    ("radical", "\\sqrt{2}", B("2^{1/2}"), True, "qwen-boxed"),
    ("radical", "\\sqrt{2}", B("\\sqrt{3}"), False, "qwen-boxed"),
    ("radical", "\\frac{\\sqrt{3}}{3}", B("\\frac{1}{\\sqrt{3}}"), True, "qwen-boxed"),
    ("radical", "\\frac{\\sqrt{3}}{3}", B("\\frac{\\sqrt{3}}{2}"), False, "qwen-boxed"),
    ("radical", "70 \\sqrt{2}", B("70\\sqrt{2}"), True, "qwen-boxed"),
    ("radical", "70 \\sqrt{2}", B("\\sqrt{9800}"), True, "qwen-boxed"),
    ("radical", "11 \\sqrt{5} + 11", B("11+11\\sqrt5"), True, "qwen-boxed"),
    ("radical", "11 \\sqrt{5} + 11", B("11\\sqrt{5}-11"), False, "qwen-boxed"),
    ("radical", "\\frac{15-8 \\sqrt{3}}{33}", B("\\frac{15}{33}-\\frac{8\\sqrt3}{33}"), True, "qwen-boxed"),
    ("radical", "-\\sqrt{3}", B("-\\sqrt{3}"), True, "qwen-boxed"),
    ("radical", "\\sqrt[3]{2}", B("2^{\\frac{1}{3}}"), True, "qwen-boxed"),
    ("radical", "2\\sqrt{6}", B("\\sqrt{24}"), True, "qwen-boxed"),
    # --- pi and constants --------------------------------------------------------------------------
    ("pi", "18+2\\pi", B("2\\pi+18"), True, "qwen-boxed"),
    ("pi", "18+2\\pi", B("18+\\pi"), False, "qwen-boxed"),
    ("pi", "\\frac{\\pi}{2}", B("\\pi/2"), True, "qwen-boxed"),
    ("pi", "\\frac{\\pi}{2}", B("\\frac{1}{2}\\pi"), True, "qwen-boxed"),
    ("pi", "4\\pi", B("4 \\pi"), True, "qwen-boxed"),
    ("pi", "4\\pi", B("12.566"), False, "qwen-boxed"),  # strict: a decimal for an exact pi multiple
    ("pi", "\\frac{2\\pi}{\\omega}", B("2 \\pi / \\omega"), True, "qwen-boxed"),
    ("constant", "e^{2}", B("e^2"), True, "qwen-boxed"),
    # --- degrees ------------------------------------------------------------------------------
    ("degrees", "120^\\circ", B("120"), True, "qwen-boxed"),
    ("degrees", "120^\\circ", B("120^{\\circ}"), True, "qwen-boxed"),
    ("degrees", "120^\\circ", B("120°"), True, "qwen-boxed"),
    ("degrees", "120^\\circ", B("120 \\text{ degrees}"), True, "qwen-boxed"),
    ("degrees", "75^\\circ", B("105^\\circ"), False, "qwen-boxed"),
    ("degrees", "90^{\\circ}$,$60^{\\circ}", B("90^\\circ, 60^\\circ"), True, "qwen-boxed"),
    # --- percentages ------------------------------------------------------------------------------
    ("percent", "17.5%", B("17.5\\%"), True, "qwen-boxed"),
    ("percent", "17.5%", B("17.5"), True, "qwen-boxed"),
    ("percent", "17.5%", B("0.175"), True, "qwen-boxed"),
    ("percent", "17.5%", B("1.75"), False, "qwen-boxed"),
    ("percent", "25", B("25\\%"), True, "qwen-boxed"),
    ("percent", "0.25", B("25\\%"), True, "qwen-boxed"),
    ("percent", "0.25", B("25"), False, "qwen-boxed"),  # no % anywhere: no x100 leniency
    ("percent", "10", B("20\\%"), False, "qwen-boxed"),
    # --- units -------------------------------------------------------------------------------------
    ("units", "5", B("5 \\text{ cm}"), True, "qwen-boxed"),
    ("units", "5", B("5\\text{cm}^2"), True, "qwen-boxed"),
    ("units", "12", B("12 \\text{ square units}"), True, "qwen-boxed"),
    ("units", "18", B("\\$18"), True, "qwen-boxed"),
    ("units", "18", B("18 \\text{ dollars}"), True, "qwen-boxed"),
    ("units", "18", B("\\$18.00"), True, "qwen-boxed"),
    ("units", "1.6", B("1.6 \\mathrm{~cm}"), True, "qwen-boxed"),
    ("units", "6.2", B("6.2 \\text{ hours}"), True, "qwen-boxed"),
    ("units", "6.2", B("6.3 \\text{ hours}"), False, "qwen-boxed"),
    ("units", "27", B("27 miles"), True, "qwen-boxed"),
    # --- scientific notation -------------------------------------------------------------------------
    ("scientific", "1.45e-5", B("1.45 \\times 10^{-5}"), True, "qwen-boxed"),
    ("scientific", "2.19e6", B("2.19\\times10^6"), True, "qwen-boxed"),
    ("scientific", "2.19e6", B("2190000"), True, "qwen-boxed"),
    ("scientific", "2.19e6", B("2.19 \\times 10^{5}"), False, "qwen-boxed"),
    ("scientific", "4.4677 \\times 10^{14}", B("4.4677e14"), True, "qwen-boxed"),
    ("scientific", "6.43 \\times 10^{16}", B("6.43 \\cdot 10^{16}"), True, "qwen-boxed"),
    ("scientific", "7.25 \\times 10^{-11}", B("7.25e-11"), True, "qwen-boxed"),
    ("scientific", "7.25 \\times 10^{-11}", B("7.25e-12"), False, "qwen-boxed"),
    ("scientific", "6e13", B("6\\times 10^{13}"), True, "qwen-boxed"),
    # --- intervals ------------------------------------------------------------------------------------
    ("interval", "(2,\\infty)", B("(2, \\infty)"), True, "qwen-boxed"),
    ("interval", "(2,\\infty)", B("\\left(2,\\infty\\right)"), True, "qwen-boxed"),
    ("interval", "(2,\\infty)", B("[2,\\infty)"), False, "qwen-boxed"),
    ("interval", "[-1, 3)", B("[-1,3)"), True, "qwen-boxed"),
    ("interval", "[-1, 3)", B("[-1,3]"), False, "qwen-boxed"),
    ("interval", "(-\\infty, 0] \\cup [4, \\infty)", B("(-\\infty,0]\\cup[4,\\infty)"), True, "qwen-boxed"),
    ("interval", "(-\\infty, 0] \\cup [4, \\infty)", B("(-\\infty,0)\\cup(4,\\infty)"), False, "qwen-boxed"),
    ("interval", "[\\frac{1}{2}, 2]", B("[0.5, 2]"), True, "qwen-boxed"),
    # --- sets and lists --------------------------------------------------------------------------------
    ("set", "\\{1, 2, 3\\}", B("\\{3, 2, 1\\}"), True, "qwen-boxed"),
    ("set", "\\{1, 2, 3\\}", B("\\{1, 2\\}"), False, "qwen-boxed"),
    ("list", "5,15", B("15, 5"), True, "qwen-boxed"),
    ("list", "5,15", B("5, 16"), False, "qwen-boxed"),
    ("list", "2400, 1350, 864", B("864, 1350, 2400"), True, "qwen-boxed"),
    ("list", "3 \\pm 2 \\sqrt{2}", B("3+2\\sqrt{2}, 3-2\\sqrt{2}"), True, "qwen-boxed"),
    ("list", "1 \\pm \\sqrt{19}", B("1+\\sqrt{19}"), False, "qwen-boxed"),
    ("list", "\\sqrt{2}-1$,$\\frac{3-\\sqrt{2}}{7}", B("\\sqrt2 - 1, \\frac{3-\\sqrt2}{7}"), True, "qwen-boxed"),
    ("list", "-2, 1", B("x=-2, x=1"), True, "qwen-boxed"),
    ("list", "19,0,1", B("19, 0, 1"), True, "qwen-boxed"),
    # --- tuples and points --------------------------------------------------------------------------------
    ("tuple", "(6,31,-1)", B("(6, 31, -1)"), True, "qwen-boxed"),
    ("tuple", "(6,31,-1)", B("(6, -1, 31)"), False, "qwen-boxed"),
    ("tuple", "(1,-16,-4,43)", B("(1,-16,-4,43)"), True, "qwen-boxed"),
    ("tuple", "\\left( 3, \\frac{\\pi}{2} \\right)", B("(3, \\frac{\\pi}{2})"), True, "qwen-boxed"),
    ("tuple", "\\left( 3, \\frac{\\pi}{2} \\right)", B("(3, \\pi)"), False, "qwen-boxed"),
    ("tuple", "(\\frac{1}{4}, \\frac{1}{27})", B("(0.25, \\frac{1}{27})"), True, "qwen-boxed"),
    ("tuple", "(-1,-9),(4+2 \\sqrt{2}, 8),(4-2 \\sqrt{2}, 8)", B("(4-2\\sqrt2,8),(-1,-9),(4+2\\sqrt2,8)"), True, "qwen-boxed"),
    ("tuple", "(2, 3)", B("5"), False, "qwen-boxed"),
    # --- matrices ------------------------------------------------------------------------------------------
    ("matrix", "\\begin{pmatrix} -2 \\\\ -14 \\\\ -7 \\end{pmatrix}", B("\\begin{pmatrix}-2\\\\-14\\\\-7\\end{pmatrix}"), True, "qwen-boxed"),
    ("matrix", "\\begin{pmatrix} -2 \\\\ -14 \\\\ -7 \\end{pmatrix}", B("\\begin{pmatrix}-2\\\\-14\\\\7\\end{pmatrix}"), False, "qwen-boxed"),
    ("matrix", "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", B("\\begin{bmatrix} 1 & 2 \\\\ 3 & 4 \\end{bmatrix}"), True, "qwen-boxed"),
    ("matrix", "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", B("\\begin{pmatrix} 1 & 3 \\\\ 2 & 4 \\end{pmatrix}"), False, "qwen-boxed"),
    ("matrix", "\\begin{pmatrix} \\frac{1}{2} \\\\ 0 \\end{pmatrix}", B("\\begin{pmatrix} 0.5 \\\\ 0 \\end{pmatrix}"), True, "qwen-boxed"),
    ("matrix", "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", B("\\begin{pmatrix} 1 & 2 & 3 & 4 \\end{pmatrix}"), False, "qwen-boxed"),
    # --- expressions and equations ---------------------------------------------------------------------------
    ("expression", "-13x+3", B("3-13x"), True, "qwen-boxed"),
    ("expression", "-13x+3", B("-13x-3"), False, "qwen-boxed"),
    ("expression", "x^2+2x+1", B("(x+1)^2"), True, "qwen-boxed"),
    ("expression", "-t^2 - t - 3", B("-(t^2+t+3)"), True, "qwen-boxed"),
    ("expression", "s^{2}+\\omega^{2}", B("\\omega^2+s^2"), True, "qwen-boxed"),
    ("expression", "6+9i", B("9i+6"), True, "qwen-boxed"),
    ("expression", "1 - 12i", B("1+12i"), False, "qwen-boxed"),
    ("equation", "y=2x+3", B("y = 3 + 2x"), True, "qwen-boxed"),
    ("equation", "y=2x+3", B("y=2x-3"), False, "qwen-boxed"),
    ("equation", "f(x)=x+1", B("f(x) = 1 + x"), True, "qwen-boxed"),
    ("equation", "M=\\frac{9}{32} \\sqrt{2}", B("\\frac{9\\sqrt{2}}{32}"), True, "qwen-boxed"),
    ("equation", "x=4", B("4"), True, "qwen-boxed"),
    ("equation", "4", B("x = 4"), True, "qwen-boxed"),
    ("equation", "k \\geqslant 2", B("k \\ge 2"), True, "qwen-boxed"),
    ("equation", "\\lfloor\\frac{2 n-1}{5}\\rfloor", B("\\left\\lfloor \\frac{2n-1}{5} \\right\\rfloor"), True, "qwen-boxed"),
    # --- text answers ---------------------------------------------------------------------------------------------
    ("text", "\\text{Yes}", B("\\text{yes}"), True, "qwen-boxed"),
    ("text", "\\text{Yes}", B("No"), False, "qwen-boxed"),
    ("text", "\\text{even}", B("\\text{Even}"), True, "qwen-boxed"),
    ("text", "\\text{even}", B("\\text{odd}"), False, "qwen-boxed"),
    ("text", "Sunday", B("\\text{Sunday}"), True, "qwen-boxed"),
    ("text", "Sunday", B("\\text{Monday}"), False, "qwen-boxed"),
    ("text", "SRMC=LRMC", B("SRMC=LRMC"), True, "qwen-boxed"),
    ("text", "4343_6", B("4343_6"), True, "qwen-boxed"),  # does not parse as math: string fallback
    ("text", "4343_6", B("4342_6"), False, "qwen-boxed"),
    # --- multiple-choice letters -------------------------------------------------------------------------------------
    ("choice", "\\text{(C)}", B("C"), True, "qwen-boxed"),
    ("choice", "\\text{(C)}", B("(C)"), True, "qwen-boxed"),
    ("choice", "\\text{(C)}", B("\\textbf{(C)}"), True, "qwen-boxed"),
    ("choice", "\\text{(C)}", B("(D)"), False, "qwen-boxed"),
    ("choice", "B", B("\\text{(B) } 12"), True, "qwen-boxed"),
    ("choice", "B", B("A"), False, "qwen-boxed"),
    # --- boxed nesting and extraction ----------------------------------------------------------------------------------
    ("boxed", "\\frac{1}{2}", "So $\\boxed{\\frac{1}{2}}$", True, "qwen-boxed"),
    ("boxed", "\\frac{1}{2}", "First $\\boxed{3}$, but wait, it is $\\boxed{\\frac{1}{2}}$.", True, "qwen-boxed"),
    ("boxed", "3", "First $\\boxed{3}$, but wait, it is $\\boxed{\\frac{1}{2}}$.", False, "qwen-boxed"),
    ("boxed", "\\frac{1}{2}", "Answer: \\fbox{\\frac{1}{2}}", True, "qwen-boxed"),
    ("boxed", "12", "Thus the answer is $\\boxed 12$.", True, "qwen-boxed"),
    ("boxed", "\\{1,2\\}", "We get $\\boxed{\\{1,2\\}}$.", True, "qwen-boxed"),
    ("boxed", "\\frac{1}{2}", "The answer is $\\boxed{\\boxed{\\frac{1}{2}}}$", True, "qwen-boxed"),
    ("boxed", "7", "It is \\boxed{7", False, "qwen-boxed"),  # unclosed box: no answer
    ("boxed", "7", "The answer is 7.", False, "qwen-boxed"),  # no box: the boxed rule says no answer
    ("boxed", "7", "\\boxed{\\text{7}}", True, "qwen-boxed"),
    ("boxed", "5", "$\\boxed{5}$ is the answer; check: \\boxed{} empty", True, "qwen-boxed"),
    ("boxed", "\\frac{a}{b}", "\\boxed{\\frac{a}{b}}", True, "qwen-boxed"),
    ("boxed", "\\frac{a}{b}", "\\boxed{\\frac{b}{a}}", False, "qwen-boxed"),
    # --- r1 template -----------------------------------------------------------------------------------------------------
    ("r1", "72", R1("72"), True, "r1"),
    ("r1", "72", R1("\\boxed{72}"), True, "r1"),
    ("r1", "72", R1("71"), False, "r1"),
    ("r1", "72", " reasoning </think> <answer> 72", True, "r1"),  # stop string trimmed </answer>
    ("r1", "72", " no tags at all, the answer is 72", False, "r1"),
    ("r1", "\\frac{1}{2}", R1("$\\frac{1}{2}$"), True, "r1"),
    ("r1", "72", R1("72") + " <answer> 71 </answer>", False, "r1"),  # the last block counts
    # --- adversarial ----------------------------------------------------------------------------------------------------------
    ("adversarial", "5", B("10^{10^{10^{10}}}"), False, "qwen-boxed"),
    ("adversarial", "7", B("9^{9^{9^{9}}}"), False, "qwen-boxed"),
    ("adversarial", "5", B("1" * 1_000_000), False, "qwen-boxed"),
    ("adversarial", "5", "x" * 1_000_000 + B("5"), True, "qwen-boxed"),
    ("adversarial", "1", B("{" * 20_000 + "1" + "}" * 20_000), False, "qwen-boxed"),
    ("adversarial", "1", "\\boxed{" * 20_000 + "1", False, "qwen-boxed"),
    ("adversarial", "1", B("\\frac{" * 5_000 + "1" + "}{2}" * 5_000), False, "qwen-boxed"),
    ("adversarial", "x", B("(x+1)^{100000}-(x+1)^{100000}+x"), True, "qwen-boxed"),
    ("adversarial", "2", B("\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{4^{128}}}}}}}}}"), True, "qwen-boxed"),
    ("adversarial", "0", B("\\int_0^\\infty e^{-x^{x^{x}}}\\,dx"), False, "qwen-boxed"),
    ("adversarial", "3", B("\\}\\}\\}{{{"), False, "qwen-boxed"),
    ("adversarial", "3", B("\\x00\\frac{"), False, "qwen-boxed"),
    ("adversarial", "3", B(""), False, "qwen-boxed"),
    ("adversarial", "3", "", False, "qwen-boxed"),
    ("adversarial", "3", B("3" + "\\!" * 100_000), True, "qwen-boxed"),
]
