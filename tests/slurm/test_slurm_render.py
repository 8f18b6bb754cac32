"""`megarl submit --dry-run` rendering and the checks made before anything is submitted.

No Slurm needed: the rendered scripts are checked for their layout, then parsed by `bash -n`.
GPU-shaped recipes (configs/simplerl_zoo_qwen2.5_7b.yaml and _32b.yaml) are rendered against
model directories holding the real Qwen2.5 config.json shapes, so the TP checks run too.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import write_cpu_recipe
from megarl.config import load_config, read_recipe
from megarl.launch import LaunchOptions, plan_layout
from megarl.launch.layout import LaunchError, parse_slurm_time
from megarl.launch.node_servers import ServerPlan, server_commands
from megarl.launch.render import RunPaths, render_train_sbatch, server_plan, write_run_files
from megarl.launch.submit import main as submit_main

REPO = Path(__file__).resolve().parents[2]
QWEN25 = {  # the published config.json shapes of Qwen2.5-0.5B, -7B and -32B
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4),
    "32b": dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40,
                num_key_value_heads=8),
}


def qwen_dir(root: Path, size: str) -> Path:
    path = root / f"Qwen2.5-{size.upper()}"
    path.mkdir(parents=True, exist_ok=True)
    config = dict(dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=152064, max_position_embeddings=131072,
                       rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, hidden_act="silu",
                       torch_dtype="bfloat16"), **QWEN25[size])
    (path / "config.json").write_text(json.dumps(config))
    return path


def run_submit(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = submit_main(argv)
    return code, out.getvalue(), err.getvalue()


def bash_syntax_ok(script: str) -> None:
    proc = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def cpu_recipe(tmp_path, tiny_server_model):
    return write_cpu_recipe(tmp_path / "cpu.yaml", tiny_server_model, tmp_path / "run_cpu", actor={"tp": 2})


def test_cpu_two_node_dry_run_prints_a_readable_script_and_writes_nothing(cpu_recipe, tmp_path):
    code, script, err = run_submit([str(cpu_recipe), "--dry-run", "--nodes", "2", "--rollout-nodes", "1",
                                    "--gpus-per-node", "0", "--requeue", "--time", "01:00:00", "--partition", "debug", "run.steps=3"])
    assert code == 0, err
    assert script.startswith("#!/bin/bash\n")
    assert "trainer: 1 node(s) x 2 process(es) = world 2 = TP 2 x PP 1 x DP 1" in script
    assert "node 1, port 30000: $MEGARL_PYTHON -m megarl.cli serve --model" in script
    for directive in ("--nodes=2", "--ntasks-per-node=1", "--time=01:00:00", "--partition=debug", "--requeue",
                      "--signal=B:USR1@600", "--open-mode=append", f"--output={tmp_path / 'run_cpu'}/logs/job_%j.out"):
        assert f"#SBATCH {directive}\n" in script, directive
    assert "--gpus-per-node" not in script and "--exclusive" not in script
    assert "export MEGARL_NPROC_PER_NODE=2" in script
    assert 'node_role.sh" rollout &' in script
    assert 'node_role.sh" trainer -- megarl.cli train "$RECIPE" "$SERVERS_OVERRIDE" &' in script
    assert "scontrol requeue" in script and "megarl_node_addr" in script
    bash_syntax_ok(script)
    assert not (tmp_path / "run_cpu").exists()  # a dry run writes nothing


def test_gpu_7b_recipe_two_nodes_trainer_tp4_dp2_and_eight_servers(tmp_path):
    model = qwen_dir(tmp_path, "7b")
    code, script, err = run_submit([
        str(REPO / "configs/simplerl_zoo_qwen2.5_7b.yaml"), "--dry-run", "--nodes", "2", "--rollout-nodes", "1", "--partition", "gpu",
        "--account", "rl", "--requeue", f"model.path={model}", "rollout.server_tp=1", f"run.output_dir={tmp_path}/run7b"])
    assert code == 0, err
    assert "trainer: 1 node(s) x 8 GPU(s) = world 8 = TP 4 x PP 1 x DP 2" in script
    assert "rollout: 8 sglang server(s) per rollout node (1 GPU(s) each, TP 1) = 8 server(s)" in script
    for directive in ("--nodes=2", "--gpus-per-node=8", "--exclusive", "--time=48:00:00", "--partition=gpu",
                      "--account=rl", "--requeue"):
        assert f"#SBATCH {directive}\n" in script, directive
    assert "STEP_CPUS=$SLURM_CPUS_ON_NODE" in script
    assert "--tp-size 1 --random-seed 8 --dtype bfloat16 --base-gpu-id 7 --config <0600 admin-key file>" in script
    assert "--admin-api-key" not in script  # the key never appears on a command line
    assert script.count("-m sglang.launch_server") == 8
    bash_syntax_ok(script)


def test_gpu_32b_recipe_six_nodes(tmp_path):
    model = qwen_dir(tmp_path, "32b")
    code, script, err = run_submit([str(REPO / "configs/simplerl_zoo_qwen2.5_32b.yaml"), "--dry-run", "--requeue",
                                    f"model.path={model}", f"run.output_dir={tmp_path}/run32b"])
    assert code == 0, err
    assert "nodes 0-1: trainer; nodes 2-5: rollout servers" in script
    assert "trainer: 2 node(s) x 8 GPU(s) = world 16 = TP 8 x PP 1 x DP 2" in script
    assert "rollout: 2 sglang server(s) per rollout node (4 GPU(s) each, TP 4) = 8 server(s)" in script
    assert "--tp-size 4" in script and "--base-gpu-id 4" in script
    bash_syntax_ok(script)


def test_colocated_gpu_layout_shares_the_gpus(tmp_path):
    model = qwen_dir(tmp_path, "7b")
    code, script, err = run_submit([
        str(REPO / "configs/simplerl_zoo_qwen2.5_7b.yaml"), "--dry-run", "--nodes", "2", "--rollout-nodes", "0",
        "--colocate", f"model.path={model}", "rollout.transport=disk", f"run.output_dir={tmp_path}/colo",
        "rollout.mem_fraction_static=0.25"])  # the trainer stays resident while SGLang generates: 0.5 does not fit
    assert code == 0, err
    assert "mode=colocated" in script and "TP 4 x PP 1 x DP 4" in script
    assert "--enable-memory-saver" in script
    assert "--mem-fraction-static 0.25" in script  # colocated SGLang takes the recipe's share of each GPU
    assert 'node_role.sh" both -- megarl.cli train' in script
    bash_syntax_ok(script)


def test_partitioned_single_node_05b_recipe(tmp_path):
    """configs/simplerl_zoo_qwen2.5_0.5b.yaml: one 8-GPU node, 4 trainer GPUs + 4 SGLang servers."""
    model = qwen_dir(tmp_path, "0.5b")
    code, script, err = run_submit([str(REPO / "configs/simplerl_zoo_qwen2.5_0.5b.yaml"), "--dry-run",
                                    f"model.path={model}", f"run.output_dir={tmp_path}/r05"])
    assert code == 0, err
    assert "every node: GPUs 0-3 trainer, GPUs 4-7 rollout servers" in script
    assert "trainer: 1 node(s) x 4 GPU(s) = world 4 = TP 1 x PP 1 x DP 4" in script
    assert "--base-gpu-id 4" in script and "--base-gpu-id 7" in script and "--enable-memory-saver" not in script
    assert "export MEGARL_NPROC_PER_NODE=4" in script and 'node_role.sh" both --' in script
    bash_syntax_ok(script)


@pytest.mark.parametrize("flags, overrides, message", [
    (["--nodes", "2", "--rollout-nodes", "2"], [], "leaves no trainer node"),
    (["--nodes", "2", "--rollout-nodes", "1", "--gpus-per-node", "6"], [], "actor.tp=4 must divide --gpus-per-node=6"),
    (["--nodes", "2", "--rollout-nodes", "1"], ["rollout.server_tp=3"], "rollout.server_tp=3 must divide --gpus-per-node=8"),
    (["--nodes", "2", "--rollout-nodes", "1"], ["rollout.transport=tensor"], "set rollout.transport=distributed"),
    (["--nodes", "2", "--rollout-nodes", "0"], [], "leaves no GPU for the trainer"),
    (["--nodes", "3", "--rollout-nodes", "0"], [], "rollout.num_servers=8 does not split evenly over --nodes=3"),
    (["--nodes", "2", "--rollout-nodes", "1", "--colocate"], [], "drop --rollout-nodes or the colocation"),
    (["--nodes", "2", "--rollout-nodes", "1"], ["rollout.servers=[http://h:1]"], "remove rollout.servers"),
    (["--nodes", "2", "--rollout-nodes", "1", "--gpus-per-node", "0"], [], "rollout.engine=sglang needs GPUs"),
    (["--nodes", "3", "--rollout-nodes", "1"], ["actor.pp=7"], "16 ranks is not a multiple of actor.tp*actor.pp = 4*7 = 28"),
    (["--nodes", "2", "--rollout-nodes", "1", "--time", "1:2:3:4"], [], "is not a Slurm time limit"),
    (["--nodes", "2", "--rollout-nodes", "1", "--time", "10", "--preempt-notice", "900"], [], "must be positive and shorter"),
    (["--nodes", "2", "--rollout-nodes", "1", "--requeue"], ["run.resume=false"], "--requeue needs run.resume=true"),
    (["--nodes", "2", "--rollout-nodes", "1"], ["actor.tp=3"], "actor.tp=3"),
    # without model.config (the recipe names one: then a dry run plans without the weights)
    (["--nodes", "2", "--rollout-nodes", "1"], ["model.path=/does/not/exist", "model.config=null"], "model.path='/does/not/exist' does not exist"),
    (["--nodes", "2", "--rollout-nodes", "1", "--server-port", "70000"], [], "--server-port=70000 is not a TCP port; use one in 1-65535"),
    (["--nodes", "2", "--rollout-nodes", "1", "--master-port", "0"], [], "--master-port=0 is not a TCP port"),
    (["--nodes", "2", "--rollout-nodes", "1", "--server-port", "65533"], [], "4 servers per node would use ports 65533..65536"),
    (["--nodes", "2", "--rollout-nodes", "1", "--sbatch-arg", "--qos=high\ntouch /tmp/pwned"], [],
     "contains the control character '\\n'"),
    (["--nodes", "2", "--rollout-nodes", "1", "--sbatch-arg=--comment=a\rb"], [], "contains the control character '\\r'"),
    (["--nodes", "2", "--rollout-nodes", "1", "--job-name", "x\necho pwned"], [], "contains the control character"),
    (["--nodes", "2", "--rollout-nodes", "1", "--partition", "gpu\n"], [], "contains the control character"),
    (["--nodes", "2", "--rollout-nodes", "1", "--sbatch-arg", "qos=high"], [], "is not an option; write it as --name=value"),
])
def test_invalid_layouts_fail_with_one_line_errors(tmp_path, flags, overrides, message):
    model = qwen_dir(tmp_path, "7b")
    argv = [str(REPO / "configs/simplerl_zoo_qwen2.5_7b.yaml"), "--dry-run", *flags, f"model.path={model}",
            f"run.output_dir={tmp_path}/run", *overrides]
    code, out, err = run_submit(argv)
    assert code == 2 and out == ""
    assert message in err, err
    assert err.count("\n") == 1 and err.startswith("megarl submit: "), err


def test_no_path_checks_needs_dry_run(tmp_path):
    code, _, err = run_submit([str(REPO / "configs/simplerl_zoo_qwen2.5_7b.yaml"), "--no-path-checks"])
    assert code == 2 and "only works with --dry-run" in err


def test_without_sbatch_submit_says_where_to_run(cpu_recipe, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    code, _, err = run_submit([str(cpu_recipe), "--nodes", "2", "--rollout-nodes", "1", "--gpus-per-node", "0"])
    assert code == 2 and "sbatch is not on PATH" in err


@pytest.mark.parametrize("text, seconds", [("30", 1800), ("10:30", 630), ("24:00:00", 86400), ("2-00", 172800),
                                           ("1-02:03", 93780), ("1-00:00:05", 86405)])
def test_parse_slurm_time(text, seconds):
    assert parse_slurm_time(text) == seconds


def test_preempt_notice_defaults_to_a_quarter_of_short_limits(cpu_recipe):
    cfg = load_config(cpu_recipe)
    layout = plan_layout(cfg, LaunchOptions(nodes=2, rollout_nodes=1, gpus_per_node=0, time="00:20:00"))
    assert layout.preempt_notice_s == 300
    with pytest.raises(LaunchError, match="--procs-per-node=3 on GPU nodes"):
        plan_layout(cfg, LaunchOptions(nodes=2, rollout_nodes=1, gpus_per_node=8, procs_per_node=3))


def test_launch_options_are_the_recipes_slurm_section_under_the_given_flags(cpu_recipe):
    from megarl.config import SlurmConfig
    from megarl.launch.submit import _options, build_parser

    slurm = SlurmConfig(nodes=3, rollout_nodes=1, gpus_per_node=4, partition="gpu", account="lab", time="02:00:00")
    opts = LaunchOptions.from_recipe(slurm, nodes=5, time=None, partition=None, colocate=True)
    assert (opts.nodes, opts.rollout_nodes, opts.gpus_per_node, opts.partition, opts.account, opts.time, opts.colocate) == (
        5, 1, 4, "gpu", "lab", "02:00:00", True)
    # without flags or recipe values, megarl submit's options are SlurmConfig's defaults and LaunchOptions' own
    cfg = load_config(cpu_recipe)
    plain = _options(build_parser().parse_args([str(cpu_recipe)]), cfg.model_copy(update={"slurm": SlurmConfig()}))
    assert plain == LaunchOptions.from_recipe(SlurmConfig()) == LaunchOptions()
    flagged = _options(build_parser().parse_args([str(cpu_recipe), "--gpus-per-node", "0", "--server-port", "31000",
                                                  "--entry", "tests.probe run"]), cfg)
    assert (flagged.gpus_per_node, flagged.server_port, flagged.entry) == (0, 31000, ("tests.probe", "run"))
    assert flagged.nodes == cfg.slurm.nodes


def test_run_files_are_complete_and_the_frozen_recipe_loads(cpu_recipe, tmp_path, tiny_server_model):
    cfg = load_config(cpu_recipe, ["run.steps=3"])
    opts = LaunchOptions(nodes=2, rollout_nodes=1, gpus_per_node=0, requeue=True, time="01:00:00")
    layout = plan_layout(cfg, opts)
    paths = RunPaths(Path(cfg.run.output_dir))
    script = render_train_sbatch(cfg, layout, opts, paths, recipe_source=str(cpu_recipe), model_dir=str(tiny_server_model),
                                 submit_dir=REPO)
    plan = server_plan(cfg, layout, str(tiny_server_model), opts.server_port)
    write_run_files(cfg, layout, plan, paths, script)
    assert paths.sbatch_file.read_text() == script and os.access(paths.sbatch_file, os.X_OK)
    assert os.access(paths.slurm_dir / "node_role.sh", os.X_OK)
    frozen = load_config(paths.recipe_file, ['rollout.servers=["http://127.0.0.1:30000"]'])
    assert frozen.run.steps == 3 and frozen.run.output_dir == str(paths.run_dir) and frozen.actor.tp == 2
    launch = json.loads(paths.plan_file.read_text())
    assert launch["layout"]["mode"] == "split" and ServerPlan(**launch["servers"]) == plan
    assert not list(paths.run_dir.rglob(".*.tmp*"))  # nothing half-written left behind


def test_server_commands_builtin_and_sglang():
    builtin = ServerPlan(engine="builtin", model="/m", dtype="fp32", server_tp=1, servers_per_node=2, base_port=31000,
                         colocate=False, seed=5)
    (port0, argv0), (port1, argv1) = server_commands(builtin, 1, "py", None)
    assert (port0, port1) == (31002, 31003)
    assert argv1 == ["py", "-m", "megarl.cli", "serve", "--model", "/m", "--host", "0.0.0.0", "--port", "31003",
                     "--seed", "8", "--dtype", "float32"]
    sglang = ServerPlan(engine="sglang", model="/m", dtype="bf16", server_tp=4, servers_per_node=2, base_port=30000,
                        colocate=True, seed=1)
    (_, first), (_, second) = server_commands(sglang, 0, "py", "/run/key.yaml")
    assert second[:3] == ["py", "-m", "sglang.launch_server"]
    assert "--enable-memory-saver" in second and second[second.index("--base-gpu-id") + 1] == "4"
    assert second[second.index("--config") + 1] == "/run/key.yaml" and "--base-gpu-id" not in first
    assert "--admin-api-key" not in second


def test_rank_wrapper_records_exit_codes(tmp_path):
    script = tmp_path / "exits.py"
    script.write_text("import sys\nprint('args', sys.argv[1:])\nsys.exit(int(sys.argv[1]))\n")
    for code in (75, 0, 3):
        env = dict(os.environ, MEGARL_EXIT_CODE_DIR=str(tmp_path), RANK="4")
        proc = subprocess.run([sys.executable, "-m", "megarl.launch.rank", str(script), str(code)], env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == code, proc.stderr
        assert (tmp_path / "rank_4.code").read_text() == f"{code}\n"
    crash = tmp_path / "crash.py"
    crash.write_text("raise RuntimeError('boom')\n")
    proc = subprocess.run([sys.executable, "-m", "megarl.launch.rank", str(crash)], capture_output=True, text=True,
                          env=dict(os.environ, MEGARL_EXIT_CODE_DIR=str(tmp_path), RANK="4"), timeout=60)
    assert proc.returncode == 1 and "boom" in proc.stderr and (tmp_path / "rank_4.code").read_text() == "1\n"


def test_health_gives_up_when_no_server_answers():
    from megarl.launch.health import main as health_main

    assert health_main(["--timeout", "1", "--poll", "0.2", "http://127.0.0.1:9"]) == 1


def test_shipped_scripts_parse():
    for path in sorted((REPO / "slurm").glob("*.sh")) + sorted((REPO / "slurm").glob("*.sbatch")):
        bash_syntax_ok(path.read_text())


def test_recipes_slurm_sections_validate(tmp_path):
    """Every GPU recipe in configs/ lays out with its own slurm section."""
    for recipe in sorted((REPO / "configs").glob("*.yaml")):
        data = read_recipe(recipe)  # with its base merged in
        if data.get("rollout", {}).get("engine") != "sglang":
            continue
        cfg = load_config(recipe, check_files=False)
        layout = plan_layout(cfg, LaunchOptions.from_recipe(cfg.slurm))
        assert layout.world_size == layout.tp * layout.pp * layout.dp, recipe.name


def test_32b_dry_run_prints_the_memory_table_and_refuses_what_cannot_fit(tmp_path):
    model = qwen_dir(tmp_path, "32b")
    argv = [str(REPO / "configs/simplerl_zoo_qwen2.5_32b.yaml"), "--dry-run", f"model.path={model}",
            f"run.output_dir={tmp_path}/run32b", "actor.pp=2", "actor.sequence_parallel=false",  # the earlier layout:
            "actor.distributed_optimizer=false", "--nodes", "8"]  # 50 GiB per GPU
    code, script, err = run_submit(argv)
    assert code == 0, err
    assert "per-GPU memory estimate (GPU 80 GiB" in err and "| trainer | actor optimizer |" in err
    assert "| server | KV cache |" in err and "| peak | per GPU |" in err
    assert "#SBATCH --mem=0\n" in script  # the whole node's memory on GPU nodes
    code, _, err = run_submit(argv + ["--gpu-memory-gb", "40"])
    assert code == 2 and "over the 36.0 GiB budget" in err and "set actor.sequence_parallel=true" in err
    code, script, _ = run_submit(argv + ["--mem", "500G"])
    assert code == 0 and "#SBATCH --mem=500G\n" in script


def test_router_and_port_ranges_are_checked(tmp_path):
    model = qwen_dir(tmp_path, "7b")
    base = [str(REPO / "configs/simplerl_zoo_qwen2.5_7b.yaml"), "--dry-run", f"model.path={model}",
            f"run.output_dir={tmp_path}/r7"]
    code, _, err = run_submit(base + ["rollout.router=true"])
    assert code == 2 and "set rollout.router=false" in err
    code, _, err = run_submit(base + ["--server-port", "25000"])
    assert code == 2 and "overlap the rendezvous ports 20000..29999" in err
    code, _, err = run_submit(base + ["--master-port", "30001"])
    assert code == 2 and "--master-port=30001 is one of the server ports" in err
    code, _, err = run_submit(base + ["--server-port", "25000", "--master-port", "24000"])
    assert code == 0, err


def test_preempt_notice_follows_the_measured_step_and_estimated_checkpoint(tmp_path):
    """32B: a checkpoint of ~32.8B params x 14 bytes over 2 trainer nodes at 1 GB/s is ~229 s; with a
    measured 900 s step in a previous run's metrics the notice is 1.5 x (900 + 229) s."""
    model = qwen_dir(tmp_path, "32b")
    run = tmp_path / "run32b"
    run.mkdir()
    (run / "metrics.jsonl").write_text("\n".join(json.dumps({"step": i, "perf/step_s": s}) for i, s in enumerate([700.0, 900.0, 800.0])))
    argv = [str(REPO / "configs/simplerl_zoo_qwen2.5_32b.yaml"), "--dry-run", f"model.path={model}",
            f"run.output_dir={run}", "checkpoint.every=10", "--time", "48:00:00"]
    code, script, err = run_submit(argv)
    assert code == 0, err
    assert "step 900 s measured" in err and "checkpoint about 229 s estimated" in err
    assert "#SBATCH --signal=B:USR1@1695\n" in script  # ceil(1.5 * (900 + 229.3))
    code, script, err = run_submit(argv[:-2] + ["--time", "01:00:00"])  # a quarter of an hour caps it, with a warning
    assert code == 0 and "#SBATCH --signal=B:USR1@900\n" in script and "give a longer --time" in err


def test_32b_dry_run_without_the_weights_plans_from_the_shipped_config(tmp_path):
    """The recipe's model.path is not on this machine: model.config (megarl/model_configs) stands in."""
    recipe = REPO / "configs/simplerl_zoo_qwen2.5_32b.yaml"
    assert not Path(load_config(recipe, check_files=False).model.path).exists()
    code, script, err = run_submit([str(recipe), "--dry-run", f"run.output_dir={tmp_path}/run32b"])
    assert code == 0, err
    assert "per-GPU memory estimate (GPU 80 GiB" in err and "| trainer | total | 63.6 |" in err, err
    assert "is not on this machine; planned from model.config=Qwen2.5-32B" in err
    assert script.startswith("#!/bin/bash")
    code, _, err = run_submit([str(recipe), "--dry-run", "--no-path-checks", f"run.output_dir={tmp_path}/run32b"])
    assert code == 0 and "| trainer | total | 63.6 |" in err, err
    # nothing describes the model: said, not dropped silently
    code, _, err = run_submit([str(recipe), "--dry-run", "--no-path-checks", "model.config=null", f"run.output_dir={tmp_path}/r"])
    assert code == 0 and "no per-GPU memory estimate: no config.json at /models/Qwen2.5-32B; set model.config" in err, err
    code, _, err = run_submit([str(recipe), "--dry-run", "model.config=null", f"run.output_dir={tmp_path}/r"])
    assert code == 2 and "(or set model.config to plan without the weights" in err
    code, _, err = run_submit([str(recipe), "--dry-run", "model.config=Qwen2.5-23B", f"run.output_dir={tmp_path}/r"])
    assert code == 2 and "did you mean 'Qwen2.5-32B'?" in err


def test_servers_of_a_torch_dist_source_start_from_its_hf_assets(tmp_path):
    """model.path a Megatron-LM torch_dist root (as tools/convert_hf_to_megatron.py --format torch_dist writes it:
    tracker file, iter_NNNNNNN/ with Megatron's metadata.json, hf/ with config.json): SGLang gets the hf/ folder and
    placeholder weights, which the trainer overwrites before the first rollout (before: the root itself, no config.json)."""
    from tiny_models import megatron_lm_layout

    root = tmp_path / "qwen7b_torch_dist"
    megatron_lm_layout(root)
    qwen_dir(tmp_path, "7b").rename(root / "hf")
    code, script, err = run_submit([str(REPO / "configs/simplerl_zoo_qwen2.5_7b.yaml"), "--dry-run", "--nodes", "2",
                                    "--rollout-nodes", "1", f"model.path={root}", f"run.output_dir={tmp_path}/run"])
    assert code == 0, err
    servers = script.count("-m sglang.launch_server")
    assert servers and script.count(f"--model-path {root / 'hf'} ") == servers, script
    assert script.count("--load-format dummy") == servers
    cpu = run_submit([str(REPO / "configs/simplerl_zoo_qwen2.5_7b.yaml"), "--dry-run", "--nodes", "2", "--rollout-nodes", "1",
                      "--gpus-per-node", "0", "rollout.engine=builtin", f"model.path={root}", f"run.output_dir={tmp_path}/cpu"])
    assert cpu[0] == 2 and "is a torch_dist checkpoint and rollout.engine=builtin starts from HF weights" in cpu[2], cpu[2]
