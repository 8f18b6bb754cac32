"""megarl.model_source: every kind of model source resolves to the HF directory that describes it (and,
for torch_dist, the checkpoint its weights come from); a source that names nothing usable fails in one
line naming the fix."""

from __future__ import annotations

import json

import pytest

from megarl import model_source
from megarl.model_source import ModelSourceError
from tiny_models import megatron_lm_layout


def _hf(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    return path


def test_an_hf_directory_is_its_own_hf_dir(tmp_path):
    source = model_source.resolve(_hf(tmp_path / "Qwen2.5-0.5B"))
    assert (source.kind, source.hf_dir, source.checkpoint, source.has_hf_weights) == ("hf", tmp_path / "Qwen2.5-0.5B", None, True)


@pytest.mark.parametrize("named", ["root", "iteration"])
def test_a_megatron_lm_torch_dist_checkpoint_reads_its_hf_folder(tmp_path, named):
    root = tmp_path / "mlm"
    step = megatron_lm_layout(root)
    _hf(root / "hf")
    given = root if named == "root" else step
    source = model_source.resolve(given)
    assert (source.kind, source.hf_dir, source.checkpoint, source.has_hf_weights) == ("torch_dist", root / "hf", given, False)
    assert model_source.architecture(given) == root / "hf"


def test_a_resume_checkpoint_takes_its_config_from_model_tokenizer(tmp_path):
    step = tmp_path / "run" / "checkpoints" / "step_000010"
    megatron_lm_layout(step, 10).rename(step / "torch_dist")  # a resume checkpoint's tensors: step_N/torch_dist/
    (step / "latest_checkpointed_iteration.txt").unlink()
    base = _hf(tmp_path / "base")
    source = model_source.resolve(step, tokenizer=base)
    assert (source.kind, source.hf_dir, source.checkpoint) == ("torch_dist", base, step)
    with pytest.raises(ModelSourceError, match="set model.tokenizer"):
        model_source.resolve(step)


def test_a_registered_scheme_resolves_without_building(tmp_path, monkeypatch):
    """The demo's `builtin:` scheme (registered by importing megarl.demo, as megarl.cli and conftest do)."""
    monkeypatch.setenv("MEGARL_CACHE_DIR", str(tmp_path))
    source = model_source.resolve("builtin:toy-arith", build=False)
    assert (source.kind, source.scheme, source.name) == ("scheme", "builtin", "toy-arith")
    assert source.hf_dir.parent == tmp_path and not source.hf_dir.exists()
    assert model_source.architecture("builtin:toy-arith-long")["max_position_embeddings"] == 768
    assert model_source.is_built("builtin:toy-arith") is False and model_source.is_built(str(tmp_path)) is None


def test_unknown_names_and_schemes_name_what_exists(tmp_path):
    with pytest.raises(ModelSourceError, match="unknown builtin model; available: builtin:toy-arith, builtin:toy-arith-long"):
        model_source.resolve("builtin:toy-arith-longer")
    with pytest.raises(ModelSourceError, match="no model scheme 'nosuch:' is registered .registered: builtin:.*import megarl.demo"):
        model_source.resolve("nosuch:model")
    odd = _hf(tmp_path / "models:v2")  # an existing path with a colon is a path
    assert model_source.resolve(str(odd)).kind == "hf"


def test_a_checkpoint_of_the_retired_layout_names_the_migration_command(tmp_path):
    old = tmp_path / "old_ckpt"
    (old / "hf").mkdir(parents=True)
    (old / "megarl_checkpoint.json").write_text(json.dumps({"tp": 1, "pp": 1}))
    (old / "hf" / "config.json").write_text("{}")
    with pytest.raises(ModelSourceError, match="convert_megarl_layout_to_torch_dist.py --in"):
        model_source.resolve(str(old))
