"""The kinds of HF <-> Megatron parameter mapping, and the per-stage tables built from an
architecture's layer table; used by loading, conversion, resharding and weight sync.

An architecture (megarl/models/architectures/) declares its parameters as mapping objects. Each
names one Megatron parameter (with `{layer}` standing for the layer index) and the Hugging Face
tensor(s) it is made from; its class says how the tensors relate, once for every direction:

  Replicated     same tensor on every TP rank (norms)
  RowParallel    split along dim 1 (row-parallel linear: input features split)
  VocabParallel  split along dim 0 after padding the vocab rows to the padded vocab size
  QKV            q, k, v fused per query group ([q heads of the group, k, v] per group), then dim 0
  GatedMLP       gate and up: each TP rank holds [gate shard; up shard]

Every kind knows its TP partition dimension (`partition_dim`, None when replicated), the HF
shapes its tensors have (`hf_shapes`, from the ModelSpec) and the shape of one TP rank's
Megatron tensor (`megatron_shape`). `to_megatron_shard` builds one TP rank's tensor from the HF
tensors; `to_hf` rebuilds the HF tensors from all TP ranks' shards. Both are exact (pure
indexing), so a round trip is bitwise.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar, Iterator, Sequence

import torch

from megarl.models.spec import ModelSpec

Shape = tuple[int, ...]
# Names a shape may be declared with: ModelSpec's integer fields and derived sizes.
_SPEC_SIZES = frozenset(
    {f.name for f in dataclasses.fields(ModelSpec) if f.type in ("int", int)} | {"q_size", "kv_size"}
)


@dataclasses.dataclass(frozen=True)
class ParamMapping(abc.ABC):
    """One Megatron parameter and the HF tensor(s) it is made from; subclasses say how."""

    megatron: str
    hf: tuple[str, ...]
    expert: int | None = None  # the global expert index of a routed expert's weight (None: not an expert's)

    partition_dim: ClassVar[int | None] = None  # the TP split dimension of the Megatron tensor
    hf_arity: ClassVar[int] = 1  # how many HF tensors make one Megatron tensor

    def __post_init__(self):
        if isinstance(self.hf, str):
            object.__setattr__(self, "hf", (self.hf,))
        if len(self.hf) != self.hf_arity:
            raise ValueError(f"{type(self).__name__} {self.megatron}: takes {self.hf_arity} HF tensor name(s), got {self.hf}")

    def at_layer(self, layer: int) -> "ParamMapping":
        return dataclasses.replace(
            self, megatron=self.megatron.replace("{layer}", str(layer)), hf=tuple(h.replace("{layer}", str(layer)) for h in self.hf)
        )

    def at_expert(self, local: int, global_index: int) -> "ParamMapping":
        """An expert template (`{expert}` in both names) for one expert: Megatron numbers the experts
        of an expert-parallel rank locally, HF globally."""
        return dataclasses.replace(
            self, megatron=self.megatron.replace("{expert}", str(local)),
            hf=tuple(h.replace("{expert}", str(global_index)) for h in self.hf), expert=global_index,
        )

    # ---- shapes (from the spec, no tensors) ---------------------------------------------
    @abc.abstractmethod
    def hf_shapes(self, spec: ModelSpec) -> tuple[Shape, ...]:
        """Full shape of each HF tensor, in the order of `hf`."""

    @abc.abstractmethod
    def megatron_shape(self, spec: ModelSpec, tp: int) -> Shape:
        """Shape of one TP rank's Megatron tensor."""

    # ---- HF -> one TP rank ---------------------------------------------------------------
    def to_megatron_shard(self, hf: Sequence[torch.Tensor], tp_rank: int, tp: int, spec: ModelSpec) -> torch.Tensor:
        if len(hf) != len(self.hf):
            raise ValueError(f"{self.megatron}: expected {len(self.hf)} HF tensors ({self.hf}), got {len(hf)}")
        return self._shard(hf, tp_rank, tp, spec)

    @abc.abstractmethod
    def _shard(self, hf: Sequence[torch.Tensor], tp_rank: int, tp: int, spec: ModelSpec) -> torch.Tensor:
        """This TP rank's Megatron tensor from the HF tensor(s)."""

    # ---- all TP ranks -> HF -------------------------------------------------------------
    @abc.abstractmethod
    def to_hf(self, shards: Sequence[torch.Tensor], spec: ModelSpec) -> tuple[torch.Tensor, ...]:
        """The HF tensor(s) from every TP rank's shard, in the order of `hf`."""


@dataclasses.dataclass(frozen=True)
class _DeclaredShape(ParamMapping):
    """A one-to-one mapping whose HF shape is declared by the names of ModelSpec sizes
    (e.g. `("hidden_size", "q_size")`), so the table states each shape once."""

    dims: tuple[str, ...] = ()

    def __post_init__(self):
        super().__post_init__()
        unknown = [d for d in self.dims if d not in _SPEC_SIZES]
        if not self.dims or unknown:
            raise ValueError(f"{self.megatron}: dims={self.dims} must name ModelSpec sizes from {sorted(_SPEC_SIZES)}")

    def hf_shapes(self, spec: ModelSpec) -> tuple[Shape, ...]:
        return (tuple(int(getattr(spec, d)) for d in self.dims),)


@dataclasses.dataclass(frozen=True)
class Replicated(_DeclaredShape):
    """The same tensor on every TP rank under another name (norms)."""

    def megatron_shape(self, spec: ModelSpec, tp: int) -> Shape:
        return self.hf_shapes(spec)[0]

    def _shard(self, hf, tp_rank, tp, spec):
        return hf[0]

    def to_hf(self, shards, spec):
        return (shards[0],)


@dataclasses.dataclass(frozen=True)
class RowParallel(_DeclaredShape):
    """A row-parallel linear weight: input features (dim 1) split over TP ranks."""

    partition_dim: ClassVar[int] = 1

    def megatron_shape(self, spec: ModelSpec, tp: int) -> Shape:
        rows, cols = self.hf_shapes(spec)[0]
        return (rows, cols // tp)

    def _shard(self, hf, tp_rank, tp, spec):
        return hf[0].chunk(tp, dim=1)[tp_rank]

    def to_hf(self, shards, spec):
        return (torch.cat(list(shards), dim=1),)


@dataclasses.dataclass(frozen=True)
class VocabParallel(ParamMapping):
    """Embedding or LM head [vocab, hidden]: rows padded to the padded vocab size, then split."""

    partition_dim: ClassVar[int] = 0

    def hf_shapes(self, spec: ModelSpec) -> tuple[Shape, ...]:
        return ((spec.vocab_size, spec.hidden_size),)

    def megatron_shape(self, spec: ModelSpec, tp: int) -> Shape:
        return (spec.padded_vocab_size(tp) // tp, spec.hidden_size)

    def _shard(self, hf, tp_rank, tp, spec):
        full = hf[0]
        rows = spec.padded_vocab_size(tp) // tp
        start, stop = tp_rank * rows, (tp_rank + 1) * rows
        shard = full.new_zeros((rows,) + tuple(full.shape[1:]))
        real = full[start:min(stop, full.shape[0])]
        shard[: real.shape[0]] = real
        return shard

    def to_hf(self, shards, spec):
        return (torch.cat(list(shards), dim=0)[: spec.vocab_size],)


@dataclasses.dataclass(frozen=True)
class QKV(ParamMapping):
    """q, k, v projections (weights, or biases with `bias=True`) fused by query group: Megatron's
    `linear_qkv` holds [q heads of group g; k_g; v_g] for each group, split over TP by groups."""

    bias: bool = False

    partition_dim: ClassVar[int] = 0
    hf_arity: ClassVar[int] = 3

    def _tail(self, spec: ModelSpec) -> Shape:
        return () if self.bias else (spec.hidden_size,)

    def hf_shapes(self, spec: ModelSpec) -> tuple[Shape, ...]:
        tail = self._tail(spec)
        return ((spec.q_size, *tail), (spec.kv_size, *tail), (spec.kv_size, *tail))

    def megatron_shape(self, spec: ModelSpec, tp: int) -> Shape:
        return ((spec.q_size + 2 * spec.kv_size) // tp, *self._tail(spec))

    def _shard(self, hf, tp_rank, tp, spec):
        q, k, v = hf
        groups, d = spec.num_kv_heads, spec.head_dim
        tail = tuple(q.shape[1:])
        per_group = [q.reshape(groups, spec.heads_per_group * d, *tail), k.reshape(groups, d, *tail), v.reshape(groups, d, *tail)]
        return torch.cat(per_group, dim=1).reshape(-1, *tail).chunk(tp, dim=0)[tp_rank]

    def to_hf(self, shards, spec):
        fused = torch.cat(list(shards), dim=0)
        groups, d = spec.num_kv_heads, spec.head_dim
        tail = tuple(fused.shape[1:])
        per_group = fused.reshape(groups, (spec.heads_per_group + 2) * d, *tail)
        q, k, v = per_group.split([spec.heads_per_group * d, d, d], dim=1)
        return q.reshape(-1, *tail).contiguous(), k.reshape(-1, *tail).contiguous(), v.reshape(-1, *tail).contiguous()


@dataclasses.dataclass(frozen=True)
class GatedMLP(ParamMapping):
    """gate and up projections of a SwiGLU MLP: each TP rank's `linear_fc1` is [gate shard; up shard].
    `size` names the ModelSpec field with the MLP's width (a routed expert's is moe_ffn_hidden_size)."""

    size: str = "ffn_hidden_size"

    partition_dim: ClassVar[int] = 0
    hf_arity: ClassVar[int] = 2

    def hf_shapes(self, spec: ModelSpec) -> tuple[Shape, ...]:
        return ((getattr(spec, self.size), spec.hidden_size),) * 2

    def megatron_shape(self, spec: ModelSpec, tp: int) -> Shape:
        return (2 * getattr(spec, self.size) // tp, spec.hidden_size)

    def _shard(self, hf, tp_rank, tp, spec):
        gate, up = hf
        return torch.cat([gate.chunk(tp, dim=0)[tp_rank], up.chunk(tp, dim=0)[tp_rank]], dim=0)

    def to_hf(self, shards, spec):
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves], dim=0), torch.cat([h[1] for h in halves], dim=0)


EMBEDDING = VocabParallel("embedding.word_embeddings.weight", "model.embed_tokens.weight")
FINAL_NORM = Replicated("decoder.final_layernorm.weight", "model.norm.weight", dims=("hidden_size",))
OUTPUT_UNTIED = VocabParallel("output_layer.weight", "lm_head.weight")
# With tied embeddings and PP > 1, the last stage keeps its own copy of the embedding as
# output_layer.weight (Megatron all-reduces their gradients); it is loaded from the embedding.
OUTPUT_TIED = VocabParallel("output_layer.weight", "model.embed_tokens.weight")


def stage_mappings(
    spec: ModelSpec, pp_rank: int, pp: int, *, layer_impl: str = "local", role: str = "actor",
    ep_rank: int = 0, ep: int = 1,
) -> Iterator[tuple[str, ParamMapping]]:
    """(Megatron name in this stage's state dict, mapping with global HF names) for one PP stage
    and, in a mixture of experts, one expert-parallel rank (its experts only).

    Megatron numbers layers locally within a stage and experts locally within an EP rank; HF names
    carry the global indices. The layer table comes from the spec's architecture. The critic has no
    output layer mapping (its value head is new, see models.build).
    """
    first, last = pp_rank == 0, pp_rank == pp - 1
    if first:
        yield EMBEDDING.megatron, EMBEDDING
    experts = list(enumerate(spec.local_experts(ep_rank, ep))) if spec.is_moe else []
    for local, global_layer in enumerate(spec.layers_of_stage(pp_rank, pp)):
        for template in spec.architecture.layer_mappings_at(spec, layer_impl, global_layer):
            at_layer = template.at_layer(global_layer)
            if "{expert}" not in template.megatron:
                yield template.megatron.replace("{layer}", str(local)), at_layer
                continue
            for local_expert, global_expert in experts:
                mapping = at_layer.at_expert(local_expert, global_expert)
                yield template.megatron.replace("{layer}", str(local)).replace("{expert}", str(local_expert)), mapping
    if last:
        yield FINAL_NORM.megatron, FINAL_NORM
        if role == "actor":
            if not spec.tie_word_embeddings:
                yield OUTPUT_UNTIED.megatron, OUTPUT_UNTIED
            elif pp > 1:
                yield OUTPUT_TIED.megatron, OUTPUT_TIED


def stage_mappings_all_experts(
    spec: ModelSpec, pp_rank: int, pp: int, ep: int, *, layer_impl: str = "local", role: str = "actor"
) -> Iterator[tuple[str, ParamMapping, int | None]]:
    """Every mapping of one PP stage across its EP ranks, in HF order: (Megatron name on the
    owning EP rank, mapping, owning EP rank or None for a parameter every EP rank holds)."""
    per_rank = [{m.hf: (n, m) for n, m in stage_mappings(spec, pp_rank, pp, layer_impl=layer_impl, role=role,
                                                         ep_rank=e, ep=ep) if m.expert is not None}
                for e in range(ep)]
    for name, mapping in stage_mappings(spec, pp_rank, pp, layer_impl=layer_impl, role=role, ep_rank=0, ep=1):
        if mapping.expert is None:
            yield name, mapping, None
            continue
        owner = mapping.expert // (spec.num_experts // ep)
        local, owned = per_rank[owner][mapping.hf]
        yield local, owned, owner


def hf_tensor_shapes(spec: ModelSpec) -> dict[str, Shape]:
    """Every tensor a complete HF checkpoint of this spec holds, with its shape (lm_head only when
    untied), in mapping order; derived from the mappings' own shapes."""
    return {
        name: shape
        for _, mapping in stage_mappings(spec, 0, 1)
        for name, shape in zip(mapping.hf, mapping.hf_shapes(spec))
    }
