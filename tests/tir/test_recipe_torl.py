"""The ToRL recipe's prompt and tool format are upstream's, byte for byte (GAIR-NLP/ToRL@cb78cf1)."""

from megarl.config import load_config
from megarl.data.templates import render_prompt
from megarl.rollout.multi_turn import TOOL_FORMATS, render_output
from megarl.sandbox import SandboxResult

# verl/utils/dataset/rl_dataset.py, as Python reads the literal (the '''...''' string ends with a newline)
TIR_BASE_0309 = ("A conversation between User and Assistant. The user asks a question, and the Assistant solves it.\n"
                 "User: Please integrate natural language reasoning with programs to solve the problem above, and put "
                 "your final answer within \\boxed{}.\n[PROMPT]\nAssistant:\n")


def test_torl_prompt_byte_for_byte():
    question = "What is $1+1$?"
    assert render_prompt("torl", question).encode() == TIR_BASE_0309.replace("[PROMPT]", question).encode()


def test_torl_tool_format_and_output_cut():
    fmt = TOOL_FORMATS["torl"]
    response = "Let me compute.\n```python\nx = 2\nprint(x ** 10)\n```\n```output"
    assert fmt.extract_code(response) == "x = 2\nprint(x ** 10)\n"
    assert fmt.stop == "```output" and fmt.output_format.replace("{output}", "1024") == "\n1024\n```\n"
    long = SandboxResult(status="ok", stdout="7" * 300, stderr="", seconds=0.1, exit_code=0)
    assert render_output(long, 256) == "7" * 128 + "..." + "7" * 128
    error = SandboxResult(status="error", stdout="", stderr="Traceback ...\n  File x\nNameError: name 'a' is not defined\n",
                          seconds=0.1, exit_code=1)
    assert render_output(error, 256) == "NameError: name 'a' is not defined"  # the last line only, as ToRL


def test_the_recipe_enables_the_interpreter():
    cfg = load_config("configs/torl_qwen2.5_math_7b.yaml", check_files=False)
    assert cfg.tool.enabled and cfg.tool.max_turns == 2 and cfg.data.template == "torl" and cfg.rollout.n == 16
