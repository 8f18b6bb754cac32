"""Slurm launch: plan a job's node layout from a recipe, render the sbatch script, submit it.

`megarl submit configs/x.yaml --nodes 2 --rollout-nodes 1` goes through three library steps:

    layout = plan_layout(cfg, LaunchOptions(nodes=2, rollout_nodes=1, gpus_per_node=8))   # validates
    script = render_train_sbatch(cfg, layout, paths)                                        # readable text
    job_id = submit_script(paths.sbatch_file)                                               # sbatch

The rendered script calls the per-node pieces in `slurm/` (env.sh, node_role.sh), which run the
trainer under torchrun (`megarl.launch.rank` records each rank's exit code) and the rollout
servers (`megarl.launch.node_servers`). See docs/slurm.md.
"""

from megarl.launch.layout import JobLayout, LaunchError, LaunchOptions, plan_layout

__all__ = ["JobLayout", "LaunchError", "LaunchOptions", "plan_layout"]
