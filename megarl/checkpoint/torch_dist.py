"""Megatron's distributed checkpoint format (torch_dist, `megatron.core.dist_checkpointing`): the
trainer's resume state and model checkpoints laid out the way Megatron-LM and Megatron-Bridge read them.

Two uses, one format:

* Resume state (`save_training_state` / `load_training_state`, collective): every worker's model
  (`sharded_state_dict()`), its Megatron optimizer (`sharded_state_dict(model_sd)`; the distributed
  optimizer's state in the "fully_reshardable" form, gathered over DP with gloo one DP group at a
  time) and its LR scheduler. Megatron reshards on load, so a run saved at TP2 x DP2 resumes at
  TP1 x PP2. The actor's tensors carry Megatron-LM's own names (no prefix); the critic's carry
  `critic.`.
* Model checkpoints for the Megatron ecosystem (`save_model`, `load_model_weights`): a root with
  Megatron-LM's tracker `latest_checkpointed_iteration.txt` and `iter_NNNNNNN/` holding the
  torch_dist files, the model's tensors under megatron-core GPT names (megatron-core stores the
  local layers' norms under Transformer Engine's fused names, so either spec reads them), `args`/`iteration`/
  `checkpoint_version` in the common state as Megatron-LM writes them, and the HF config and
  tokenizer in `<root>/hf/` (Megatron-LM ignores it; megarl and the HF export read it).

The padded vocabulary (`ModelSpec.padded_vocab_size(tp)`, Megatron-LM's rule: a multiple of
128 x TP) is the one thing resharding cannot change: its rows are the global shape of the
embedding, the LM head and their optimizer state.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
from pathlib import Path

import torch

from megarl.checkpoint.safetensors_stream import CheckpointFormatError

TRACKER_FILE = "latest_checkpointed_iteration.txt"  # Megatron-LM's name
HF_ASSETS_DIR = "hf"
CHECKPOINT_VERSION = 3.0  # Megatron-LM's checkpoint_version for torch_dist checkpoints
# Each DP group's optimizer state gathered to its DP rank 0 over gloo (not all-gathered on every
# rank, which would hold a DP group's whole optimizer state on each); reshardable over TP/PP/DP.
# ("fully_sharded_model_space", the no-exchange form, does not save in megatron-core 0.16.1.)
OPTIMIZER_SHARDING = {"distrib_optim_sharding_type": "fully_reshardable",
                      "distrib_optim_fully_reshardable_mem_efficient": True}
ROLE_PREFIX = {"actor": "", "critic": "critic."}
def iteration_dir_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


# ---- recognizing checkpoints -------------------------------------------------------------------
def is_torch_dist_dir(path: str | Path) -> bool:
    """True for a torch_dist checkpoint directory itself (megatron-core's own test)."""
    from megatron.core import dist_checkpointing

    path = Path(path)
    return path.is_dir() and dist_checkpointing.check_is_distributed_checkpoint(str(path))


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """The torch_dist directory that `path` names: the directory itself, a Megatron-LM root (the
    iteration its tracker file names) or a megarl resume checkpoint (`step_N/torch_dist`)."""
    path = Path(path)
    if is_torch_dist_dir(path):
        return path
    tracker = path / TRACKER_FILE
    if tracker.is_file():
        text = tracker.read_text().strip()
        sub = "release" if text == "release" else iteration_dir_name(int(text)) if text.isdigit() else None
        if sub is None:
            raise CheckpointFormatError(f"{tracker}: holds {text!r}, expected an iteration number or 'release'")
        if not is_torch_dist_dir(path / sub):
            raise CheckpointFormatError(
                f"{path / sub}: named by {TRACKER_FILE} but not a torch_dist checkpoint (no metadata.json); "
                "only Megatron's torch_dist format is read (convert legacy torch checkpoints with Megatron-LM first)"
            )
        return path / sub
    if is_torch_dist_dir(path / "torch_dist"):
        return path / "torch_dist"
    raise CheckpointFormatError(
        f"{path}: not a torch_dist checkpoint (no metadata.json), a Megatron-LM checkpoint root (no {TRACKER_FILE}) "
        "or a megarl resume checkpoint"
    )


def looks_like_torch_dist(path: str | Path) -> bool:
    try:
        resolve_checkpoint_dir(path)
    except CheckpointFormatError:
        return False
    return True


def hf_assets_of(path: str | Path, tokenizer: str | Path | None = None) -> Path:
    """The HF directory (config.json, tokenizer) describing a torch_dist checkpoint: `<root>/hf/`
    as megarl writes it, else `tokenizer` (model.tokenizer: the HF model the checkpoint came from)."""
    path = Path(path)
    for candidate in (path / HF_ASSETS_DIR, path.parent / HF_ASSETS_DIR):
        if (candidate / "config.json").is_file():
            return candidate
    if tokenizer is not None and (Path(tokenizer) / "config.json").is_file():
        return Path(tokenizer)
    raise CheckpointFormatError(
        f"{path}: a torch_dist checkpoint without {HF_ASSETS_DIR}/config.json; set model.tokenizer (or --hf-assets) to the "
        "HF model directory it was made from (its config.json describes the architecture, its tokenizer the vocabulary)"
    )


# ---- megatron-core 0.16.1 with torch's Adam -------------------------------------------------------
@functools.cache
def _tolerate_torch_adam_step() -> None:
    """megatron-core 0.16.1 restores the "fully_reshardable" optimizer state by copying every key of
    each parameter's optimizer state, 'step' included, from tensors that hold no 'step' (it is kept
    per param group): a KeyError with torch's Adam (no apex/TE fused Adam, e.g. on CPU). The copy
    keeps the parameter's own 'step', which `load_state_dict` has just set from the param group."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    original = DistributedOptimizer._set_main_param_and_optimizer_states

    def set_states(self, model_param, tensors):
        if "step" not in tensors and not self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            group_index, group_order = self.model_param_group_index_map[model_param]
            main_param = self.optimizer.param_groups[group_index]["params"][group_order]
            step = self.optimizer.state[main_param].get("step")
            if step is not None:
                tensors = {**tensors, "step": step}
        return original(self, model_param, tensors)

    DistributedOptimizer._set_main_param_and_optimizer_states = set_states


def _unshare_torch_adam_steps(optimizer) -> None:
    """megatron-core 0.16.1's DistributedOptimizer.load_state_dict gives every parameter's torch-Adam
    state the same 'step' tensor; torch's Adam increments each parameter's step in place, so the
    shared one would advance once per parameter per step (wrong bias correction). Give each its own."""
    for opt in _optimizers(optimizer):
        inner = getattr(opt, "optimizer", None)
        for state in getattr(inner, "state", {}).values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()


_WRITER_MANAGER = []  # keeps the Manager below alive for the life of the process


def _writer_helper_dies_with_this_process() -> None:
    """megatron-core's checkpoint writer collects its write results through a multiprocessing Manager
    it spawns on first use, a server process that would outlive a killed trainer (holding its stdout
    and stderr open, so whoever waits for them waits forever). Start that Manager here instead, its
    server process set to die with this one, and hand megatron-core its queue."""
    import multiprocessing
    from multiprocessing.managers import SyncManager

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    from megarl.runtime.process import die_with_parent

    if filesystem_async._results_queue is None:
        manager = SyncManager(ctx=multiprocessing.get_context("spawn"))
        manager.start(initializer=die_with_parent)
        _WRITER_MANAGER.append(manager)
        filesystem_async._results_queue = manager.Queue()


def _optimizers(optimizer) -> list:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _ensure_optimizer_state(optimizer) -> None:
    """An optimizer that has not stepped yet (a run stopped during its first step, or checkpointed
    before it) has no Adam state, while a resume builds its load request with moments for every
    parameter: give it the state a fresh Adam starts from, keeping the (main) params. The distributed
    optimizer's `state_dict` needs one to read the step: a zero-gradient step fills it. The plain one
    (fp32, or bf16/fp16 with main copies) gets Megatron's zero moments, plus step 0 for torch's Adam."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for opt in _optimizers(optimizer):
        if len(opt.optimizer.state) != 0:
            continue
        if isinstance(opt, DistributedOptimizer):
            saved = [p.detach().clone() for group in opt.optimizer.param_groups for p in group["params"]]
            opt._init_optimizer_states_with_dummy_values()
            params = [p for group in opt.optimizer.param_groups for p in group["params"]]
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)
        elif opt.init_state_fn is not None:
            opt.init_state_fn(opt.optimizer, opt.config)
            if isinstance(opt.optimizer, torch.optim.Adam):  # fused Adams keep the step per param group
                for state in opt.optimizer.state.values():
                    state.setdefault("step", torch.tensor(0.0))


# ---- resume state (collective) -------------------------------------------------------------------
def _model_state(model, role: str) -> dict:
    from megarl.models.export import unwrap_model

    return unwrap_model(model).sharded_state_dict(prefix=ROLE_PREFIX[role])


def _training_state(workers: dict, *, is_loading: bool) -> dict:
    _tolerate_torch_adam_step()
    state = {}
    for role, worker in workers.items():
        if role not in ROLE_PREFIX:
            raise ValueError(f"no checkpoint prefix for worker {role!r}; known: {', '.join(ROLE_PREFIX)}")
        _ensure_optimizer_state(worker.optimizer)
        model_sd = _model_state(worker.model, role)
        optimizer_sd = worker.optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=OPTIMIZER_SHARDING)
        if not is_loading:
            _keep_step_zero(worker.optimizer, optimizer_sd)
        state[role] = {
            "model": model_sd,
            "optimizer": optimizer_sd,
            "scheduler": worker.scheduler.state_dict() if worker.scheduler is not None else None,
        }
    return state


def _keep_step_zero(optimizer, optimizer_sd: dict) -> None:
    """megatron-core 0.16.1 stores torch-Adam's per-parameter 'step' as one `common_step`, but only
    when it is truthy: a fresh optimizer's checkpoint (step 0) would load moments without a step,
    which torch's Adam refuses (KeyError: 'step'). Store the 0 (plain optimizer; the distributed one
    keeps its step in its own format)."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    opts = _optimizers(optimizer)
    parts = [optimizer_sd] if len(opts) == 1 else [optimizer_sd[i] for i in range(len(opts))]
    for opt, part in zip(opts, parts):
        if isinstance(opt, DistributedOptimizer) or not isinstance(getattr(opt, "optimizer", None), torch.optim.Adam):
            continue
        saved = (part["optimizer"] if "optimizer" in part else part)["state"]  # bf16/fp16 main copies, or fp32
        if saved and "common_step" not in saved:
            saved["common_step"] = torch.tensor(0.0)


def save_training_state(directory: str | Path, workers: dict, *, async_save: bool = False):
    """Collective: write every worker's model, optimizer and scheduler into `directory` (created,
    must be empty). With `async_save`, returns megatron-core's AsyncRequest (the files are complete
    once it has been finalized), else None."""
    from megatron.core import dist_checkpointing

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    from megarl.runtime import collectives

    collectives.barrier()
    _writer_helper_dies_with_this_process()
    return dist_checkpointing.save(_training_state(workers, is_loading=False), str(directory),
                                   async_sharded_save=async_save, validate_access_integrity=True)


def load_training_state(directory: str | Path, workers: dict) -> None:
    """Collective: restore every worker from `directory`, resharding to this run's TP/PP/DP."""
    from megatron.core import dist_checkpointing

    state = dist_checkpointing.load(_training_state(workers, is_loading=True), str(directory))
    for role, worker in workers.items():
        prefix = ROLE_PREFIX[role]
        worker.model.load_state_dict({k.removeprefix(prefix): v for k, v in state[role]["model"].items()})
        worker.optimizer.load_state_dict(state[role]["optimizer"])
        _unshare_torch_adam_steps(worker.optimizer)
        if worker.scheduler is not None and state[role]["scheduler"] is not None:
            worker.scheduler.load_state_dict(state[role]["scheduler"])


def roles_in(directory: str | Path) -> set[str]:
    """Which workers a resume checkpoint holds (from its common state; no tensors read)."""
    from megatron.core import dist_checkpointing

    common = dist_checkpointing.load_common_state_dict(str(directory))
    return {role for role in ROLE_PREFIX if role in common}


# ---- model checkpoints in Megatron-LM's layout ------------------------------------------------------
def megatron_lm_args(spec, config, tp: int, pp: int, dtype: torch.dtype) -> argparse.Namespace:
    """The model fields of Megatron-LM's `args` that its loader compares or reuses
    (`--use-checkpoint-args`), for the megatron-core GPT model megarl builds."""
    return argparse.Namespace(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, num_layers=spec.num_layers,
        hidden_size=spec.hidden_size, ffn_hidden_size=spec.ffn_hidden_size, num_attention_heads=spec.num_heads,
        num_query_groups=spec.num_kv_heads, group_query_attention=spec.num_kv_heads != spec.num_heads,
        kv_channels=spec.head_dim, max_position_embeddings=spec.max_position_embeddings,
        seq_length=spec.max_position_embeddings, padded_vocab_size=spec.padded_vocab_size(tp),
        make_vocab_size_divisible_by=spec.vocab_multiple, untie_embeddings_and_output_weights=not spec.tie_word_embeddings,
        normalization="RMSNorm", norm_epsilon=spec.rms_norm_eps, swiglu=True, add_qkv_bias=spec.qkv_bias,
        add_bias_linear=False, qk_layernorm=bool(config.qk_layernorm), position_embedding_type="rope",
        rotary_base=int(spec.rope_theta), bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, params_dtype=dtype,
        ckpt_format="torch_dist",
    )


def save_model(model, root: str | Path, hf_assets_dir: str | Path, *, iteration: int = 0) -> Path:
    """Collective: write the live model as `root/iter_NNNNNNN/` (torch_dist) with Megatron-LM's
    tracker, common state and `root/hf/`. `root` must not exist or be empty. Returns the iteration dir."""
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps

    from megarl.checkpoint.format import check_output_dir, copy_hf_assets
    from megarl.models.export import unwrap_model
    from megarl.runtime import collectives

    module = unwrap_model(model)
    if getattr(module, "megarl_role", "actor") != "actor":
        raise ValueError("only an actor (a causal LM with its head) is written as a Megatron-LM model checkpoint")
    root = Path(root)
    rank = torch.distributed.get_rank()
    if rank == 0:
        check_output_dir(root)
    collectives.barrier()
    iter_dir = root / iteration_dir_name(iteration)
    if rank == 0:
        iter_dir.mkdir(parents=True, exist_ok=True)
    collectives.barrier()
    tp, pp = ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size()
    dtype = next(module.parameters()).dtype
    state = {
        "model": module.sharded_state_dict(),
        "args": megatron_lm_args(module.megarl_spec, module.config, tp, pp, dtype),
        "iteration": iteration,
        "checkpoint_version": CHECKPOINT_VERSION,
    }
    _writer_helper_dies_with_this_process()
    dist_checkpointing.save(state, str(iter_dir))
    if rank == 0:
        copy_hf_assets(hf_assets_dir, root / HF_ASSETS_DIR)
        write_tracker(root, iteration)
    collectives.barrier()
    return iter_dir


def write_tracker(root: Path, iteration: int) -> None:
    partial = root / (TRACKER_FILE + ".partial")
    partial.write_text(f"{iteration}\n")
    os.replace(partial, root / TRACKER_FILE)


def _stored_keys(directory: Path) -> dict:
    from megatron.core import dist_checkpointing

    return dist_checkpointing.load_tensors_metadata(str(directory))


@torch.no_grad()
def load_model_weights(model, path: str | Path) -> dict[str, int]:
    """Collective: fill this rank's model (actor, reference or critic trunk) from a torch_dist model
    checkpoint written by megarl, Megatron-LM or Megatron-Bridge, at any TP/PP layout with the same
    padded vocab. The critic's value head is not read. Returns {"params": n, "bytes": b}."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor
    from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory

    from megarl.models.export import unwrap_model

    directory = resolve_checkpoint_dir(path)
    module = unwrap_model(model)
    role = getattr(module, "megarl_role", "actor")
    stored = _stored_keys(directory)
    prefix = model_prefix(stored, directory)
    wanted = {}
    for name, value in module.sharded_state_dict().items():
        if not isinstance(value, (ShardedTensor, ShardedTensorFactory)) or (role == "critic" and name.startswith("output_layer.")):
            continue  # _extra_state objects (TE fp8 metadata) and the critic's fresh value head
        if value.key not in stored and prefix + value.key not in stored:
            raise CheckpointFormatError(f"{directory}: has no tensor {prefix + value.key!r} for the model's {name}")
        if isinstance(value, ShardedTensor):  # (a factory, the gated MLP's fc1, checks its parts on load)
            have = tuple(stored[prefix + value.key].global_shape)
            if have != tuple(value.global_shape):
                raise CheckpointFormatError(
                    f"{directory}: {prefix + value.key} has global shape {have}, this model at this layout needs "
                    f"{tuple(value.global_shape)}" + (" (the padded vocab differs: Megatron pads it to a multiple of "
                                                     "128 x TP; load at a TP size with the same padded vocab)"
                                                     if "embedding" in value.key or "output_layer" in value.key else "")
                )
        value.key = prefix + value.key
        wanted[name] = value
    unfilled = [n for n, _ in module.named_parameters() if n not in wanted and not (role == "critic" and n.startswith("output_layer."))]
    if unfilled:
        raise CheckpointFormatError(f"{directory}: nothing in the checkpoint fills model parameter(s) {unfilled[:5]}")
    loaded = dist_checkpointing.load(wanted, str(directory))
    params = dict(module.state_dict(keep_vars=True))
    nbytes = 0
    for name in wanted:  # `loaded` also holds the checkpoint's common state (args, iteration, ...)
        params[name].copy_(loaded[name])
        nbytes += loaded[name].numel() * loaded[name].element_size()
    return {"params": len(wanted), "bytes": nbytes}


def model_prefix(stored: dict, directory: Path) -> str:
    """Megatron-LM writes the model's tensors unprefixed; accept one common prefix (e.g. 'model.')."""
    if any(k.startswith(("embedding.", "decoder.")) for k in stored):
        return ""
    prefixes = {m.group(1) for k in stored if (m := re.match(r"^(.*?)(embedding|decoder)\.", k))}
    if len(prefixes) == 1:
        return prefixes.pop()
    raise CheckpointFormatError(f"{directory}: no megatron-core GPT tensors (embedding.*, decoder.*) found")
