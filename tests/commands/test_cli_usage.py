"""What the `megarl` command says when it is given too little, or a recipe it cannot parse."""

from __future__ import annotations

import subprocess
import sys

import pytest

from megarl import cli
from megarl.config import ConfigError, load_config


@pytest.mark.parametrize("argv", [[], ["train"]])
def test_a_missing_command_or_recipe_prints_the_usage_and_exits_2(argv, capsys):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and ("usage: megarl <command>" in captured.err or "`megarl train RECIPE" in captured.err)


def test_the_megarl_program_alone_exits_2():
    run = subprocess.run([sys.executable, "-m", "megarl.cli"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "usage: megarl <command>" in run.stderr


def test_help_still_exits_0(capsys):
    assert cli.main(["--help"]) == 0 and "usage: megarl" in capsys.readouterr().out


@pytest.mark.parametrize("text, where, problem", [
    ("run:\n  name: x\nmodel:\n  path: builtin:toy-arith\n   dtype: fp32\n", ":5:9:", "mapping values are not allowed here"),
    ("run: {name: x\n", ":2:1:", "expected ',' or '}'"),
    ("run:\n  name: \"x\n", ":3:1:", "found unexpected end of stream"),
])
def test_yaml_errors_name_file_line_and_column(tmp_path, text, where, problem):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(recipe)
    message = str(err.value)
    assert message.startswith(f"{recipe}{where} not valid YAML: ") and problem in message, message
    assert "\n" not in message
