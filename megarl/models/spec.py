"""ModelSpec: the architecture facts megarl needs, read from a Hugging Face config.json, and the
registry of architecture families that read them.

Each family (megarl/models/architectures/) registers itself for its HF `model_type`s with
`register_architecture`; `ModelSpec.from_hf` looks the config's model_type up here and lets that
family parse the config. The spec reads config.json as plain JSON so it does not depend on the
installed transformers version's config classes (transformers 5 moved `rope_theta` and
`rope_scaling` into `rope_parameters`; both spellings are accepted).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from megarl.models.architectures.base import Architecture


class UnsupportedModelError(ValueError):
    """The HF config describes something megarl cannot build (names the field and the fix)."""


DEFAULT_VOCAB_MULTIPLE = 128

# HF model_type -> the family that builds it; filled by the modules of megarl.models.architectures
# (imported by the megarl.models package, so it is complete whenever this module is usable).
_ARCHITECTURES: dict[str, "Architecture"] = {}


def register_architecture(cls: type["Architecture"]) -> type["Architecture"]:
    """Class decorator: register one architecture family under each of its `model_types`."""
    for model_type in cls.model_types:
        if model_type in _ARCHITECTURES:
            raise ValueError(f"model_type {model_type!r} is registered twice ({_ARCHITECTURES[model_type]!r} and {cls.__name__})")
        _ARCHITECTURES[model_type] = cls()
    return cls


def supported_model_types() -> dict[str, str]:
    """{HF model_type: the models it covers}, sorted by model_type."""
    return {t: _ARCHITECTURES[t].models for t in sorted(_ARCHITECTURES)}


def architecture_for(model_type: Any, where: str = "config") -> "Architecture":
    """The registered family for an HF model_type; a clear error listing the supported ones otherwise."""
    if model_type not in _ARCHITECTURES:
        listed = ", ".join(f"{t} ({models})" for t, models in supported_model_types().items())
        raise UnsupportedModelError(f"{where}: model_type={model_type!r} is not supported; megarl builds {listed}")
    return _ARCHITECTURES[model_type]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    model_type: str
    vocab_size: int
    hidden_size: int
    ffn_hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    rope_scaling: dict | None = None  # llama3-style scaling parameters, None for plain RoPE
    sliding_window: int | None = None  # Mistral v0.1-style sliding-window attention
    vocab_multiple: int = DEFAULT_VOCAB_MULTIPLE
    # Mixture of experts (0 experts: a dense model). `moe_layers` lists the global indices of the
    # layers whose MLP is the routed-expert layer; the others keep the dense MLP (ffn_hidden_size).
    num_experts: int = 0
    moe_top_k: int = 0
    moe_ffn_hidden_size: int = 0
    norm_topk_prob: bool = False  # renormalize the top-k routing probabilities to sum to 1
    moe_layers: tuple[int, ...] = ()
    router_aux_loss_coef: float = 0.0  # load-balancing loss weight (Megatron's moe_aux_loss_coeff)
    router_z_loss_coef: float = 0.0  # router z-loss weight (Megatron's moe_z_loss_coeff)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_hf(cls, source: str | Path | dict[str, Any]) -> "ModelSpec":
        """Read a spec from an HF model directory, a config.json path, or a config dict."""
        if isinstance(source, dict):
            cfg, where = source, "config"
        else:
            path = Path(source)
            if path.is_dir():
                path = path / "config.json"
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path}: no HF config.json here; pass a Hugging Face model directory (with config.json)"
                )
            try:
                cfg = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise UnsupportedModelError(f"{path}: not valid JSON ({err}); re-download or fix the file") from err
            where = str(path)
        return architecture_for(cfg.get("model_type"), where).spec_from_config(cfg, where)

    # ---- derived facts ------------------------------------------------------------------
    @property
    def architecture(self) -> "Architecture":
        """The family that parsed this spec: its layer table, Megatron config extras and model hooks."""
        return architecture_for(self.model_type)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def is_moe_layer(self, layer: int) -> bool:
        """Whether global layer `layer` routes its tokens to experts."""
        return layer in self.moe_layers

    def local_experts(self, ep_rank: int, ep: int) -> range:
        """Global expert indices held by expert-parallel rank `ep_rank` (contiguous, as Megatron splits them)."""
        per_rank = self.num_experts // ep
        return range(ep_rank * per_rank, (ep_rank + 1) * per_rank)

    @property
    def heads_per_group(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def q_size(self) -> int:
        """Rows of the query projection: all heads."""
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Rows of the key (or value) projection: one head per query group."""
        return self.num_kv_heads * self.head_dim

    def padded_vocab_size(self, tp: int) -> int:
        """Vocab rows in Megatron: padded to a multiple of vocab_multiple * tp (removed again on export)."""
        multiple = self.vocab_multiple * tp
        return int(math.ceil(self.vocab_size / multiple) * multiple)

    def check_layout(self, tp: int, pp: int, field: str = "actor", ep: int = 1, sequence_parallel: bool | None = None) -> None:
        """Raise a clear error when a TP/PP/EP layout cannot split this model (`sequence_parallel`:
        the layout's setting where it is known; Megatron trains a MoE layer under TP only with it)."""
        if tp < 1 or pp < 1 or ep < 1:
            raise ValueError(f"{field}.tp={tp}, {field}.pp={pp}, {field}.ep={ep}: all must be >= 1")
        if ep > 1 and not self.is_moe:
            raise ValueError(f"{field}.ep={ep} needs a mixture-of-experts model; {self.model_type} is dense: set {field}.ep=1")
        if self.is_moe and self.num_experts % ep:
            raise ValueError(
                f"{field}.ep={ep} does not divide num_experts={self.num_experts}; choose ep from {_divisors(self.num_experts)}"
            )
        if self.is_moe and tp > 1 and sequence_parallel is False:
            raise ValueError(f"{field}.tp={tp} with a mixture of experts needs {field}.sequence_parallel=true (Megatron requires it)")
        if self.is_moe and self.moe_ffn_hidden_size % tp:
            raise ValueError(f"{field}.tp={tp} does not divide moe_intermediate_size={self.moe_ffn_hidden_size}")
        if self.num_heads % tp:
            raise ValueError(
                f"{field}.tp={tp} does not divide num_attention_heads={self.num_heads}; "
                f"choose tp from {_divisors(math.gcd(self.num_heads, self.num_kv_heads))}"
            )
        if self.num_kv_heads % tp:
            raise ValueError(
                f"{field}.tp={tp} does not divide num_key_value_heads={self.num_kv_heads} (query groups); "
                f"choose tp from {_divisors(math.gcd(self.num_heads, self.num_kv_heads))}"
            )
        if self.ffn_hidden_size % tp:
            raise ValueError(f"{field}.tp={tp} does not divide intermediate_size={self.ffn_hidden_size}")
        if self.num_layers % pp:
            raise ValueError(
                f"{field}.pp={pp} does not divide num_hidden_layers={self.num_layers}; "
                f"choose pp from {_divisors(self.num_layers)}"
            )

    def layers_of_stage(self, pp_rank: int, pp: int) -> range:
        """Global layer indices held by pipeline stage `pp_rank` (uniform split)."""
        per_stage = self.num_layers // pp
        return range(pp_rank * per_stage, (pp_rank + 1) * per_stage)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
