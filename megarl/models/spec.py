"""ModelSpec: the architecture facts megarl needs, read from a Hugging Face config.json.

Supported: Qwen2/Qwen2.5 (incl. Qwen2.5-Math), Llama 3/3.1 (and Llama-architecture models such as
DeepSeek-Math), Mistral. The spec reads config.json as plain JSON so it does not depend on the
installed transformers version's config classes (transformers 5 moved `rope_theta` and
`rope_scaling` into `rope_parameters`; both spellings are accepted).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any


class UnsupportedModelError(ValueError):
    """The HF config describes something megarl cannot build (names the field and the fix)."""


SUPPORTED_MODEL_TYPES = ("qwen2", "llama", "mistral")
DEFAULT_VOCAB_MULTIPLE = 128


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
        return cls._from_dict(cfg, where)

    @classmethod
    def _from_dict(cls, cfg: dict[str, Any], where: str) -> "ModelSpec":
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"{where}: model_type={model_type!r} is not supported; megarl builds "
                f"{', '.join(SUPPORTED_MODEL_TYPES)} (Qwen2/2.5, Llama 3/3.1, Mistral architectures)"
            )
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if key not in cfg:
                raise UnsupportedModelError(f"{where}: missing field {key!r} required to build the model")
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise UnsupportedModelError(f"{where}: hidden_act={act!r}; megarl's gated MLP supports only 'silu'")
        if cfg.get("mlp_bias"):
            raise UnsupportedModelError(f"{where}: mlp_bias=true is not supported (no SimpleRL-Zoo model uses it)")

        rope = dict(cfg.get("rope_parameters") or {})
        legacy_scaling = cfg.get("rope_scaling")
        if legacy_scaling:
            rope.update(legacy_scaling)
        rope_theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        rope_scaling = None
        if rope_type not in (None, "default"):
            if rope_type != "llama3":
                raise UnsupportedModelError(
                    f"{where}: rope_type={rope_type!r} is not supported; megarl supports default RoPE and 'llama3' scaling"
                )
            rope_scaling = {
                "factor": float(rope["factor"]),
                "low_freq_factor": float(rope.get("low_freq_factor", 1.0)),
                "high_freq_factor": float(rope.get("high_freq_factor", 4.0)),
                "original_max_position_embeddings": int(rope.get("original_max_position_embeddings", 8192)),
            }

        num_heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        head_dim = cfg.get("head_dim") or hidden // num_heads
        sliding_window = None
        if model_type == "mistral":
            sliding_window = cfg.get("sliding_window")
        elif model_type == "qwen2" and cfg.get("use_sliding_window"):
            raise UnsupportedModelError(
                f"{where}: use_sliding_window=true (Qwen2 per-layer windows) is not supported; set it to false"
            )
        qkv_bias = True if model_type == "qwen2" else bool(cfg.get("attention_bias", False))
        return cls(
            model_type=model_type,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            ffn_hidden_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or num_heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            rope_scaling=rope_scaling,
            sliding_window=int(sliding_window) if sliding_window else None,
        )

    # ---- derived facts ------------------------------------------------------------------
    @property
    def heads_per_group(self) -> int:
        return self.num_heads // self.num_kv_heads

    def padded_vocab_size(self, tp: int) -> int:
        """Vocab rows in Megatron: padded to a multiple of vocab_multiple * tp (removed again on export)."""
        multiple = self.vocab_multiple * tp
        return int(math.ceil(self.vocab_size / multiple) * multiple)

    def check_layout(self, tp: int, pp: int, field: str = "actor") -> None:
        """Raise a clear error when a TP/PP layout cannot split this model."""
        if tp < 1 or pp < 1:
            raise ValueError(f"{field}.tp={tp}, {field}.pp={pp}: both must be >= 1")
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
