"""The rollout protocol's vocabulary in one place: sampling parameters and the rollout defaults.

Imports nothing but the standard library, so the config (its rollout section takes its defaults
from here), the client, the built-in server and its engine all read the same declarations.

`SamplingParams` is SGLang's `sampling_params` subset that megarl sends and its built-in server
honours (names and defaults as SGLang 0.5.x's `sglang/srt/sampling/sampling_params.py`): the
client writes it with `to_request`, the server reads it with `from_request` (SGLang's checks,
each refusal one line naming the field). A new field is one line here (plus its check in
`from_request` when it has a range): the client sends it and the built-in server accepts it;
the engine then has to honour it. Fields SGLang has but the built-in engine does not implement are
accepted only at their neutral value (`NEUTRAL_SAMPLING_FIELDS`) and refused otherwise, never ignored.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# ---- defaults of the rollout section (megarl.config.RolloutConfig reads these) --------------------
REQUEST_TIMEOUT_S = 600.0  # one /generate request, client and built-in server alike: past it nobody waits
MAX_CONCURRENCY = 256  # /generate requests a client keeps in flight
MAX_BATCH_SEQUENCES = 256  # sequences a built-in server decodes together in one batch

GREEDY_TEMPERATURE = 1e-6  # SGLang treats temperatures below this as greedy decoding
TOP_K_ALL = 1 << 30  # SGLang's "no top-k" (what -1 means)
SEED_RANGE = (-(1 << 63), (1 << 63) - 1)  # sampling_seed range SGLang accepts

# Config fields that hold a model's context length, in the order SGLang's model config reads them.
CONTEXT_LENGTH_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_length_of(config) -> int | None:
    """A model's context length from its HF config (a PretrainedConfig or the config.json dict), as SGLang reads it."""
    for name in CONTEXT_LENGTH_FIELDS:
        value = config.get(name) if isinstance(config, dict) else getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class SamplingParamsError(ValueError):
    """A request's sampling parameters or prompt are invalid (answered with HTTP 400)."""


class RequestError(ValueError):
    """A request the built-in server refuses: answered with HTTP 400 and this message."""


# SGLang fields accepted only at their neutral value (anything else is refused, not ignored).
NEUTRAL_SAMPLING_FIELDS: dict[str, Any] = {
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "repetition_penalty": 1.0,
    "min_new_tokens": 0,
    "spaces_between_special_tokens": True,
    "json_schema": None,
    "regex": None,
    "ebnf": None,
    "structural_tag": None,
    "logit_bias": None,
    "custom_params": None,
    "stream_interval": None,
}
LIST_FIELDS = ("stop", "stop_token_ids")  # sent only when not empty (SGLang's default is None)


def _finite_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SamplingParamsError(f"sampling_params.{name}={value!r} must be a number")
    if not math.isfinite(value):
        raise SamplingParamsError(f"sampling_params.{name}={value!r} must be a finite number")
    return float(value)


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SamplingParamsError(f"sampling_params.{name}={value!r} must be an integer")
    return value


@dataclass
class SamplingParams:
    """SGLang `sampling_params` for one request (names and defaults as SGLang's; top_k -1: all tokens).

    `n` is the number of samples per prompt; the client's `generate(..., n)` sets it per call."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    n: int = 1
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    sampling_seed: int | None = None

    # ---- the wire format -----------------------------------------------------------------------
    def to_request(self, n: int | None = None) -> dict[str, Any]:
        """The JSON `sampling_params` (None values and empty stop lists left out; `n` overrides self.n)."""
        out = {k: v for k, v in asdict(self).items() if v is not None and not (k in LIST_FIELDS and not v)}
        if n is not None:
            out["n"] = n
        return out

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_request(cls, params: dict | None) -> "SamplingParams":
        """Parse and check a request's `sampling_params` as SGLang does (`SamplingParams.verify`)."""
        params = dict(params or {})
        supported = cls.field_names()
        unknown = sorted(set(params) - set(supported) - set(NEUTRAL_SAMPLING_FIELDS))
        if unknown:
            raise SamplingParamsError(
                f"sampling_params has unsupported field(s) {unknown}; the built-in server supports "
                f"{sorted(supported)} (use an SGLang server for the others)")
        for name, neutral in NEUTRAL_SAMPLING_FIELDS.items():
            value = params.pop(name, neutral)
            if value not in (neutral, None) and not (isinstance(value, dict) and not value):
                raise SamplingParamsError(
                    f"sampling_params.{name}={value!r} is not supported by the built-in server "
                    f"(only {neutral!r}); drop it or use an SGLang server")
        out = cls(**{name: value for name, value in params.items() if value is not None})
        out._check()
        return out

    def _check(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [str(s) for s in self.stop]
        if any(not s for s in self.stop):
            raise SamplingParamsError("sampling_params.stop contains an empty string; remove it")
        if not isinstance(self.stop_token_ids, list):
            raise SamplingParamsError(f"sampling_params.stop_token_ids={self.stop_token_ids!r} must be a list of token ids")
        self.stop_token_ids = [_integer("stop_token_ids[]", t) for t in self.stop_token_ids]
        if _integer("max_new_tokens", self.max_new_tokens) < 0:
            raise SamplingParamsError(f"sampling_params.max_new_tokens={self.max_new_tokens!r} must be an integer >= 0")
        if _integer("n", self.n) < 1:
            raise SamplingParamsError(f"sampling_params.n={self.n!r} must be an integer >= 1")
        for name in ("temperature", "top_p", "min_p"):
            setattr(self, name, _finite_number(name, getattr(self, name)))
        _integer("top_k", self.top_k)
        if self.sampling_seed is not None and not SEED_RANGE[0] <= _integer("sampling_seed", self.sampling_seed) <= SEED_RANGE[1]:
            raise SamplingParamsError(f"sampling_params.sampling_seed={self.sampling_seed} must be in [-2**63, 2**63 - 1]")
        if self.temperature < 0:
            raise SamplingParamsError(f"sampling_params.temperature={self.temperature} must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise SamplingParamsError(f"sampling_params.top_p={self.top_p} must be in (0, 1]")
        if self.top_k == 0 or self.top_k < -1:
            raise SamplingParamsError(f"sampling_params.top_k={self.top_k} must be -1 (all) or >= 1")
        if not 0.0 <= self.min_p <= 1.0:
            raise SamplingParamsError(f"sampling_params.min_p={self.min_p} must be in [0, 1]")

    # ---- what the engine derives ---------------------------------------------------------------
    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def logprob_temperature(self) -> float:
        """The temperature log-probs are taken at (SGLang: greedy counts as 1)."""
        return 1.0 if self.greedy else float(self.temperature)
