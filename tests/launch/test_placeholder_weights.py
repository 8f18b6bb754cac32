"""A Slurm job from a torch_dist checkpoint starts SGLang from the checkpoint's hf/ assets with placeholder
weights: the node servers' command line, read by SGLang's own `ServerArgs` parser, asks for `load_format=dummy`
(random weights from config.json), which the trainer's first weight push replaces."""

import argparse

from megarl.launch.node_servers import ServerPlan, server_commands


def _parsed(plan: ServerPlan) -> list[argparse.Namespace]:
    from sglang.srt.server_args import ServerArgs

    parsed = []
    for _, argv in server_commands(plan, 0, "python", None):
        parser = argparse.ArgumentParser()
        ServerArgs.add_cli_args(parser)
        parsed.append(parser.parse_args(argv[3:]))
    return parsed


def test_sglang_reads_the_placeholder_weights_flag():
    plan = dict(engine="sglang", model="/ckpt/hf", dtype="bf16", server_tp=2, servers_per_node=2, base_port=30000,
                colocate=False, seed=1)
    placeholder = _parsed(ServerPlan(**plan, placeholder_weights=True))
    assert [(a.model_path, a.load_format) for a in placeholder] == [("/ckpt/hf", "dummy")] * 2
    assert {a.load_format for a in _parsed(ServerPlan(**plan))} == {"auto"}  # an HF source loads its weights
