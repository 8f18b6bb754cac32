"""Where a model comes from (`model.path`, `megarl eval --model`, `megarl serve --model`), resolved in one place.

A model source is one of:
    an HF model directory       config.json, tokenizer and safetensors weights
    a torch_dist checkpoint     a Megatron-LM / Megatron-Bridge root (latest_checkpointed_iteration.txt), its
                                iter_NNNNNNN/, or a torch_dist directory; config.json and tokenizer from its hf/
                                folder, else `tokenizer` (model.tokenizer: the HF model it was made from)
    a resume checkpoint         a run's checkpoints/step_NNNNNN/ (its torch_dist/ tensors, read the same way)
    SCHEME:NAME                 a model a plugin registers under a scheme (`register_scheme`): the CPU demo
                                registers `builtin:` (builtin:toy-arith) when the `megarl` command loads it

Config validation, the trainer, the Slurm renderer, `megarl eval`, `megarl serve` and the tools ask this
module; none of them tests for a kind of source itself, and none imports a plugin.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

SCHEME_PATTERN = re.compile(r"^([A-Za-z][\w-]*):(?!//)(.*)$")  # builtin:toy-arith, not C:\ or hf://
OWN_FORMAT_META = "megarl_checkpoint.json"  # megarl's former checkpoint layout (retired: migrate it to torch_dist)


class ModelSourceError(ValueError):
    """A model source that names nothing usable; the message names the source and the fix."""


class ModelScheme(Protocol):
    """What a plugin registers for `SCHEME:NAME` sources."""

    def names(self) -> list[str]: ...

    def model_dir(self, name: str, *, build: bool) -> Path:
        """The model's HF directory; `build`: make it (e.g. pretrain and cache) when it is not there yet."""

    def hf_config(self, name: str) -> dict[str, Any]:
        """The model's config.json contents, known without building it (for config checks and plans)."""

    def is_built(self, name: str) -> bool: ...


_SCHEMES: dict[str, ModelScheme] = {}


def register_scheme(scheme: str, models: ModelScheme) -> None:
    """Make `scheme:NAME` sources resolve through `models` (a plugin calls this when it is imported)."""
    _SCHEMES[scheme] = models


@dataclass(frozen=True)
class ModelSource:
    given: str  # as written in the recipe or on the command line
    kind: Literal["hf", "torch_dist", "scheme"]
    hf_dir: Path  # config.json and tokenizer; the weights too, except for torch_dist
    checkpoint: Path | None = None  # torch_dist: the checkpoint the weights are loaded from
    scheme: str | None = None  # kind scheme: (scheme, name)
    name: str | None = None

    @property
    def has_hf_weights(self) -> bool:
        """The HF directory holds the weights (an inference server can load it as it is)."""
        return self.kind != "torch_dist"


def split_scheme(given: str) -> tuple[str, str] | None:
    """(scheme, name) for `builtin:toy-arith`; None for a path (an existing file or folder is always a path)."""
    match = SCHEME_PATTERN.match(given)
    if match is None or Path(given).exists():
        return None
    return match.group(1), match.group(2)


def _scheme_models(given: str, scheme: str, name: str) -> ModelScheme:
    models = _SCHEMES.get(scheme)
    if models is None:
        known = ", ".join(f"{s}:" for s in _SCHEMES) or "none"
        raise ModelSourceError(
            f"model {given!r}: no model scheme {scheme + ':'!r} is registered (registered: {known}); the CPU demo "
            "registers builtin: when the `megarl` command runs (in Python, `import megarl.demo` first)")
    if name not in models.names():
        raise ModelSourceError(f"model {given!r}: unknown {scheme} model; available: "
                               f"{', '.join(f'{scheme}:{n}' for n in models.names())}")
    return models


def resolve(given: str | Path, *, tokenizer: str | Path | None = None, build: bool = True) -> ModelSource:
    """The source `given` names. `build=False`: a scheme's model is not made, only located (plans, dry runs).
    Raises ModelSourceError naming the source and the fix."""
    given = str(given)
    parts = split_scheme(given)
    if parts is not None:
        scheme, name = parts
        models = _scheme_models(given, scheme, name)
        return ModelSource(given, "scheme", Path(models.model_dir(name, build=build)), scheme=scheme, name=name)
    path = Path(given).expanduser()
    if (path / "config.json").is_file():
        return ModelSource(given, "hf", path)
    if (path / OWN_FORMAT_META).is_file():
        raise ModelSourceError(f"{given} is a checkpoint in megarl's former Megatron layout, which no longer loads; convert it "
                               f"once: python tools/convert_megarl_layout_to_torch_dist.py --in {given} --out NEW_DIR")
    from megarl.checkpoint import torch_dist  # imports megatron: only for a path that is no HF directory

    if path.is_dir() and torch_dist.looks_like_torch_dist(path):
        try:
            hf_dir = torch_dist.hf_assets_of(path, tokenizer)
        except ValueError as err:
            raise ModelSourceError(str(err)) from None
        return ModelSource(given, "torch_dist", hf_dir, checkpoint=path)
    return ModelSource(given, "hf", path)  # not (yet) an HF directory: whoever reads config.json says so


def architecture(given: str | Path, *, tokenizer: str | Path | None = None) -> dict[str, Any] | Path:
    """The model's config.json (contents, or the directory holding it) without building a scheme's model."""
    parts = split_scheme(str(given))
    if parts is not None:
        return _scheme_models(str(given), *parts).hf_config(parts[1])
    return resolve(given, tokenizer=tokenizer, build=False).hf_dir


def is_built(given: str) -> bool | None:
    """Whether a scheme's model is made already (None for a path: nothing to make)."""
    parts = split_scheme(given)
    if parts is None:
        return None
    return _scheme_models(given, *parts).is_built(parts[1])
