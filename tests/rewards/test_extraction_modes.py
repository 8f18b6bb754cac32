"""`reward.extraction`: "qwen-math" grades as SimpleRL-Zoo's reward does, "boxed" as megarl always did.

The upstream verdicts below were established by running SimpleRL-Zoo's reward
(hkust-nlp/simpleRL-reason `verl/utils/reward_score/hf_math_verify.py`: Qwen2.5-Math's
`extract_answer(output, data_name="math")` from `qwen_math_eval_toolkit/parser.py`, both sides
wrapped in `\\boxed{}` and checked with math-verify) on each response, outside this repository.
"""

import json
import subprocess
import sys

import pytest

from megarl.config import ConfigError, RewardConfig, build_section
from megarl.rewards.extraction import EXTRACTION_MODES, extract_answer, qwen_math_answer
from megarl.rewards.grading import grade_batch
from megarl.rewards.schemes import apply_reward, compute_rewards

# (name, response, gold, SimpleRL-Zoo verdict, megarl "boxed" verdict)
EXTRACTION_CASES = [
    ("boxed", "So the final result is $\\boxed{42}$.", "42", True, True),
    ("answer_is_unboxed", "The answer is 42.", "42", True, False),
    ("last_number", "Adding them up: 5 + 37 = 42", "42", True, False),
    ("gsm8k_hashes", "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether.\n#### 72", "72", True, False),
    ("unclosed_box", "Therefore the result is \\boxed{42", "42", True, False),
    ("last_of_two_boxes", "First guess \\boxed{41}, but correcting the sum gives \\boxed{42}.", "42", True, True),
    ("box_beats_answer_is", "So \\boxed{42}. Hmm, maybe the answer is 41", "42", True, True),
    ("minerva_final_answer", "The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}", True, False),
    ("box_without_braces", "The result is \\boxed 7$.", "7", True, True),
    ("answer_is_runs_to_end", "The answer is 42. Let me verify: 6 times 7 is 42.", "42", False, False),
    ("empty_box_no_fallback", "The answer is 42, so we write \\boxed{}", "42", False, False),
    ("negative_last_number", "Solving gives x = -3", "-3", True, False),
    ("thousands_separator", "The total cost is 1,000 dollars", "1000", True, False),
    ("nothing", "I am not sure how to solve this.", "42", False, False),
]
IDS = [case[0] for case in EXTRACTION_CASES]


@pytest.mark.parametrize("mode,column", [("qwen-math", 3), ("boxed", 4)])
def test_extraction_cases_graded_as_upstream_and_as_before(mode, column):
    responses = [case[1] for case in EXTRACTION_CASES]
    golds = [case[2] for case in EXTRACTION_CASES]
    results = grade_batch(responses, golds, template="qwen-boxed", extraction_mode=mode)
    got = {case[0]: result.correct for case, result in zip(EXTRACTION_CASES, results)}
    want = {case[0]: case[column] for case in EXTRACTION_CASES}
    assert got == want
    if mode == "qwen-math":  # half of the cases change verdict with the mode (the finding)
        assert sum(case[3] != case[4] for case in EXTRACTION_CASES) == 7


def test_qwen_math_extraction_rules():
    assert qwen_math_answer("x \\boxed{\\frac{1}{2}} and more").text == "\\frac{1}{2}"
    assert qwen_math_answer("\\boxed{a\\text{b{c}}} end").text == "a\\text{b{c}}"  # nested braces
    assert qwen_math_answer("The answer is: 12.").text == "12"  # leading ':' and trailing '.' dropped
    assert qwen_math_answer("the final answer is 3/").text == "3"  # trailing '/' dropped
    assert qwen_math_answer("#### 1,234").text == "1234"
    assert qwen_math_answer("\\boxed{5}<|im_end|>junk \\boxed{6}").text == "5"  # cut at the end-of-turn marker
    found = qwen_math_answer("no numbers here")
    assert found.text is None and found.source == "none"
    assert extract_answer("The answer is 42.", "boxed").text is None
    assert extract_answer("The answer is 42.", "qwen-math").source == "answer_is"


def test_simplerl_scheme_gives_minus_one_without_a_box_even_when_correct():
    # SimpleRL v0 (experience_maker.py): `if "boxed" not in model_output: box_match = -1.0`.
    config = RewardConfig(scheme="simplerl", extraction="qwen-math")
    unboxed, boxed_wrong, boxed_right = compute_rewards(
        ["The answer is 42.", "\\boxed{41}", "\\boxed{42}"], ["42"] * 3, config, template="qwen-boxed")
    assert unboxed.correct and unboxed.reward == -1.0
    assert (boxed_wrong.reward, boxed_right.reward) == (-0.5, 1.0)
    assert apply_reward(unboxed, RewardConfig(scheme="binary", extraction="qwen-math")) == 1.0


def test_unknown_extraction_mode_is_a_clear_error():
    with pytest.raises(ConfigError, match="reward.extraction='qwen': Input should be 'boxed', 'qwen-math', 'answer_is' or 'last_number'"):
        build_section(RewardConfig, "reward", {"extraction": "qwen"})
    assert RewardConfig.model_fields["extraction"].annotation.__args__ == EXTRACTION_MODES  # one vocabulary


def test_grade_cli_extraction_flag(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"id": name, "response": response, "answer": gold}) + "\n"
                            for name, response, gold, _, _ in EXTRACTION_CASES))
    verdicts = {}
    for mode in ("qwen-math", "boxed"):
        out = subprocess.run([sys.executable, "-m", "megarl.cli", "grade", str(rows), "--extraction", mode, "--workers", "1"],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        verdicts[mode] = {json.loads(line)["id"]: json.loads(line)["correct"] for line in out.stdout.splitlines()}
    assert verdicts["qwen-math"] == {case[0]: case[3] for case in EXTRACTION_CASES}
    assert verdicts["boxed"] == {case[0]: case[4] for case in EXTRACTION_CASES}
