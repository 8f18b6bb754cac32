"""Builds Megatron GPT actors (causal LM) and critics (same trunk + scalar value head) from a ModelSpec.

Layers come from Megatron's Transformer Engine spec when transformer-engine is importable, else
from its local spec (CPU machines); nothing here copies Megatron modules. Call after
`megarl.runtime.distributed.init_runtime`, which sets up Megatron's parallel state.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from megarl.models import logit_positions
from megarl.models.mapping import stage_mappings
from megarl.models.spec import ModelSpec
from megarl.runtime.device import get_device, on_gpu


@functools.lru_cache(maxsize=None)
def transformer_engine_available() -> bool:
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:
        return False
    return on_gpu()


def layer_impl() -> str:
    """'te' (Transformer Engine layers) or 'local' (Megatron-core's own layers)."""
    return "te" if transformer_engine_available() else "local"


def layer_spec(config, moe: bool = False):
    """Megatron's layer spec for `config` (TE or local layers; q/k norms when `config.qk_layernorm`).
    `moe`: the layer's MLP is megatron-core's MoELayer (experts as a TE grouped GEMM, or a
    SequentialMLP of local MLPs)."""
    from megatron.core.models.gpt import gpt_layer_specs

    experts = dict(num_experts=config.num_moe_experts) if moe else {}
    if layer_impl() == "te":
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec(
            qk_layernorm=config.qk_layernorm, moe_grouped_gemm=moe, **experts)
    from megarl.models.attention import SDPAttention
    from megarl.models.norms import RMSNorm

    spec = gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=config.qk_layernorm, **experts)
    spec.submodules.self_attention.submodules.core_attention = SDPAttention  # torch's fused attention on CPU
    # megarl's RMSNorm everywhere Megatron's torch fallback would go (it refuses sequence parallelism)
    spec.submodules.input_layernorm = spec.submodules.pre_mlp_layernorm = RMSNorm
    if config.qk_layernorm:
        spec.submodules.self_attention.submodules.q_layernorm = RMSNorm
        spec.submodules.self_attention.submodules.k_layernorm = RMSNorm
    return spec


def block_spec(config, spec: ModelSpec | None = None):
    """This PP stage's transformer block: its layers (dense, or MoE where `spec` routes the layer to
    experts), and (local spec) megarl's RMSNorm as the final norm."""
    from megatron.core import parallel_state as ps
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

    if spec is None or not spec.is_moe:
        layers = [layer_spec(config)] * get_num_layers_to_build(config)
    else:
        kinds = {False: layer_spec(config), True: layer_spec(config, moe=True)}
        stage = spec.layers_of_stage(ps.get_pipeline_model_parallel_rank(), ps.get_pipeline_model_parallel_world_size())
        layers = [kinds[spec.is_moe_layer(i)] for i in stage]
    if layer_impl() == "te":
        if spec is None or not spec.is_moe:
            return layers[0]
        from megatron.core.extensions.transformer_engine import TENorm

        return TransformerBlockSubmodules(layer_specs=layers, layer_norm=TENorm)
    from megarl.models.norms import RMSNorm

    return TransformerBlockSubmodules(layer_specs=layers, layer_norm=RMSNorm)


def transformer_config(
    spec: ModelSpec,
    *,
    tp: int,
    pp: int,
    ep: int = 1,
    dtype: torch.dtype = torch.float32,
    initialize: bool = False,
    sequence_parallel: bool = False,
    recompute: str | None = None,
    seed_init_std: float = 0.02,
):
    """Megatron TransformerConfig for `spec` at the given layout.

    `initialize=False` skips Megatron's random init (weights come from a checkpoint).
    `recompute`: None, "selective" (attention core) or "full" (whole layers, uniform).
    """
    from megatron.core.transformer import TransformerConfig

    extra = spec.architecture.megatron_config(spec)  # the family's own fields (window, q/k norms)
    if recompute == "full":
        extra.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    elif recompute == "selective":
        extra.update(recompute_granularity="selective")
    elif recompute is not None:
        raise ValueError(f"recompute={recompute!r}; use null, 'selective' or 'full'")
    return TransformerConfig(
        num_layers=spec.num_layers,
        hidden_size=spec.hidden_size,
        num_attention_heads=spec.num_heads,
        num_query_groups=spec.num_kv_heads,
        kv_channels=spec.head_dim,
        ffn_hidden_size=spec.ffn_hidden_size,
        normalization="RMSNorm",
        layernorm_epsilon=spec.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=spec.qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        attention_softmax_in_fp32=True,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        expert_model_parallel_size=ep,
        pipeline_dtype=dtype,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu_initialization=not on_gpu(),
        perform_initialization=initialize,
        init_method_std=seed_init_std,
        sequence_parallel=sequence_parallel and tp > 1,
        **extra,
    )


class ValueHead(torch.nn.Module):
    """Scalar value per token, replacing the critic's output layer.

    Replicated on every TP rank, initialized from a fixed seed so all ranks start identical. Called
    like Megatron's output layer: `head(hidden, weight=None, runtime_gather_output=None) ->
    (values [s, b, 1], None)`, values for the whole row on every TP rank. Under sequence parallelism
    the hidden states it gets are this rank's slice of the sequence [s/tp, b, h] (Megatron's LM head
    gathers them inside its column-parallel linear): the head scores its slice and gathers the values
    (one channel, not h). Every TP rank then computes the same loss on the whole row, so the backward
    of the gather keeps this rank's slice of the gradient, and the weight's gradient, a sum over the
    rank's slice, is summed over the TP group by `finalize_model_grads` (marked `sequence_parallel`,
    as the norms are).
    """

    def __init__(self, hidden_size: int, dtype: torch.dtype, device: torch.device, seed: int = 0,
                 sequence_parallel: bool = False):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        weight = torch.randn(1, hidden_size, generator=generator) / hidden_size**0.5
        self.weight = torch.nn.Parameter(weight.to(device=device, dtype=dtype))
        self.sequence_parallel = sequence_parallel
        self.weight.sequence_parallel = sequence_parallel

    def forward(self, hidden, weight=None, runtime_gather_output=None):
        values = F.linear(hidden, self.weight)
        if self.sequence_parallel:
            from megatron.core import tensor_parallel

            values = tensor_parallel.gather_from_sequence_parallel_region(values, tensor_parallel_output_grad=False)
        return values, None


def build_model(
    spec: ModelSpec,
    *,
    role: str = "actor",
    dtype: torch.dtype = torch.float32,
    initialize: bool = False,
    sequence_parallel: bool = False,
    recompute: str | None = None,
    value_head_seed: int = 0,
    device: torch.device | None = None,
):
    """Build this rank's part of the actor or critic (pre/post-process from the PP stage).

    The actor returns logits over the padded vocab, TP-sharded ([b, s, V_padded / tp]) unless
    called with `runtime_gather_output=True`. The critic returns values [b, s, 1].
    `device`: where the weights live (default: this process's device; "meta" builds the shapes only).
    """
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel

    if role not in ("actor", "critic"):
        raise ValueError(f"role={role!r}; use 'actor' or 'critic'")
    tp, pp = ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size()
    ep = ps.get_expert_model_parallel_world_size()
    spec.check_layout(tp, pp, field=role, ep=ep, sequence_parallel=sequence_parallel)
    config = transformer_config(
        spec, tp=tp, pp=pp, ep=ep, dtype=dtype, initialize=initialize, sequence_parallel=sequence_parallel, recompute=recompute
    )
    pre = ps.is_pipeline_first_stage()
    post = ps.is_pipeline_last_stage()
    tied = spec.tie_word_embeddings and role == "actor"
    model = GPTModel(
        config=config,
        transformer_layer_spec=block_spec(config, spec),
        vocab_size=spec.padded_vocab_size(tp),
        max_sequence_length=spec.max_position_embeddings,
        pre_process=pre,
        post_process=post,
        share_embeddings_and_output_weights=tied,
        position_embedding_type="rope",
        rotary_base=int(spec.rope_theta),
        rope_scaling=False,
    )
    if spec.is_moe:
        from megarl.models import router_replay

        _router_gemm_without_te()
        router_replay.install(model, recompute=recompute == "full")  # routes replayed per micro-batch
    spec.architecture.adapt_model(model, spec)
    _mark_tensor_parallel(model, spec, role, ps.get_pipeline_model_parallel_rank(), pp)
    if role == "critic" and post:
        # The LM head Megatron just built (V/tp x H) is dropped here; the value head replaces it.
        model.output_layer = ValueHead(spec.hidden_size, dtype, device or get_device(), seed=value_head_seed,
                                       sequence_parallel=config.sequence_parallel)
    elif post:
        logit_positions.install(model)  # logits at response positions only, when asked
    model.megarl_spec = spec
    model.megarl_role = role
    return model.to(device or get_device())


def _router_gemm_without_te() -> None:
    """megatron-core 0.16.1's router GEMM tests `te_general_gemm is not None`, a name its moe_utils
    defines only when Transformer Engine imports: without TE the router raises NameError. None
    selects its torch path (what the name means when TE is absent)."""
    from megatron.core.transformer.moe import moe_utils

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None


def _mark_tensor_parallel(model, spec: ModelSpec, role: str, pp_rank: int, pp: int) -> None:
    """Set Megatron's tensor-parallel attributes on every sharded parameter, from the mapping.

    Megatron sets them only when it initializes weights itself (`perform_initialization`); with
    weights loaded from a checkpoint they would be missing, and the optimizer would then count
    sharded gradients only on TP rank 0 in the grad norm (wrong clipping under TP).
    """
    from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes

    from megatron.core import parallel_state as ps

    params = dict(model.named_parameters())
    ep, ep_rank = ps.get_expert_model_parallel_world_size(), ps.get_expert_model_parallel_rank()
    for name, mapping in stage_mappings(spec, pp_rank, pp, layer_impl=layer_impl(), role=role, ep_rank=ep_rank, ep=ep):
        if name in params and mapping.partition_dim is not None:
            param = params[name]
            for attr in ("tensor_model_parallel", "partition_dim", "partition_stride"):
                if hasattr(param, attr):
                    delattr(param, attr)
            set_tensor_model_parallel_attributes(param, True, mapping.partition_dim, 1)

