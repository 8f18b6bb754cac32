"""Bad input: clear errors naming the file or field, and nothing half-written left behind."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from megarl.checkpoint import CheckpointFormatError, hf_to_torch_dist, torch_dist_to_hf
from megarl.checkpoint.format import atomic_output_dir
from megarl.models.spec import UnsupportedModelError

TOOLS = Path(__file__).parents[2] / "tools"


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sharded_copy(src: Path, dst: Path) -> Path:
    """Copy an HF dir, re-saving its weights as two shards with an index (as large models ship)."""
    shutil.copytree(src, dst)
    (dst / "model.safetensors").unlink()
    tensors = load_file(str(src / "model.safetensors"))
    names = list(tensors)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate([names[:half], names[half:]]):
        file = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(dst / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst


def _assert_nothing_written(out: Path):
    assert not out.exists() or not any(out.iterdir())
    assert not list(out.parent.glob(f"{out.name}.tmp-*"))


def test_sharded_input_and_its_errors(hf_models, tmp_path):
    hf = _sharded_copy(hf_models["llama"], tmp_path / "llama_sharded")
    hf_to_torch_dist(hf, tmp_path / "ok")  # a sharded input converts

    out = tmp_path / "out"
    shard2 = hf / "model-00002-of-00002.safetensors"
    data = shard2.read_bytes()
    shard2.write_bytes(data[: len(data) // 2])  # corrupt (truncated) shard
    with pytest.raises(CheckpointFormatError, match="model-00002-of-00002.safetensors: .*truncated"):
        hf_to_torch_dist(hf, out)
    _assert_nothing_written(out)

    shard2.unlink()  # the index lists a file that does not exist
    with pytest.raises(CheckpointFormatError, match="index.json: lists shard file 'model-00002-of-00002.safetensors', which does not exist"):
        hf_to_torch_dist(hf, out)
    _assert_nothing_written(out)


def test_missing_and_unexpected_tensors(hf_models, tmp_path):
    src = hf_models["mistral"]
    tensors = load_file(str(src / "model.safetensors"))
    broken = tmp_path / "missing"
    shutil.copytree(src, broken)
    del tensors["model.layers.3.mlp.up_proj.weight"]
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointFormatError, match="'model.layers.3.mlp.up_proj.weight'"):
        hf_to_torch_dist(broken, tmp_path / "out")

    fewer_layers = tmp_path / "fewer_layers"  # config.json says 2 layers, weights have 4
    shutil.copytree(src, fewer_layers)
    config = json.loads((fewer_layers / "config.json").read_text())
    config["num_hidden_layers"] = 2
    (fewer_layers / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointFormatError, match="tensor 'model.layers.2.input_layernorm.weight' is not part of a mistral model"):
        hf_to_torch_dist(fewer_layers, tmp_path / "out")
    _assert_nothing_written(tmp_path / "out")


def test_unsupported_architecture(hf_models, tmp_path):
    src = hf_models["qwen2"]
    gpt2 = tmp_path / "gpt2"
    shutil.copytree(src, gpt2)
    (gpt2 / "config.json").write_text(json.dumps(dict(json.loads((src / "config.json").read_text()), model_type="gpt2")))
    with pytest.raises(UnsupportedModelError, match="gpt2/config.json: model_type='gpt2' is not supported"):
        hf_to_torch_dist(gpt2, tmp_path / "out")
    _assert_nothing_written(tmp_path / "out")


def test_refuses_non_empty_output(hf_models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="out: output directory exists and is not empty"):
        hf_to_torch_dist(hf_models["qwen2"], out)
    assert (out / "keep.txt").read_text() == "user data"
    empty = tmp_path / "empty"
    empty.mkdir()
    hf_to_torch_dist(hf_models["qwen2"], empty)  # an existing empty directory is fine
    assert (empty / "latest_checkpointed_iteration.txt").is_file()


def test_torch_dist_checkpoint_errors(hf_models, tmp_path):
    root = tmp_path / "mcore"
    hf_to_torch_dist(hf_models["qwen2"], root)
    damaged = tmp_path / "damaged"
    shutil.copytree(root, damaged)
    (damaged / "iter_0000000" / "__0_0.distcp").unlink()
    with pytest.raises(FileNotFoundError, match="__0_0.distcp"):
        torch_dist_to_hf(damaged, tmp_path / "hf")
    _assert_nothing_written(tmp_path / "hf")
    with pytest.raises(CheckpointFormatError, match="not a torch_dist checkpoint"):
        torch_dist_to_hf(hf_models["qwen2"], tmp_path / "hf")
    other = tmp_path / "other_vocab"  # an HF config whose vocab no TP size pads to the stored rows
    shutil.copytree(root, other)
    config = json.loads((other / "hf" / "config.json").read_text())
    (other / "hf" / "config.json").write_text(json.dumps(dict(config, vocab_size=5000)))
    with pytest.raises(CheckpointFormatError, match="which no TP size pads"):
        torch_dist_to_hf(other, tmp_path / "hf")


def test_atomic_output_dir_removes_partial_output(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("interrupted")
    _assert_nothing_written(out)


def test_tools_report_errors_and_convert(hf_models, tmp_path, capsys):
    to_meg, to_hf, migrate = _tool("convert_hf_to_megatron"), _tool("convert_megatron_to_hf"), _tool("convert_megarl_layout_to_torch_dist")
    for tool in (to_meg, to_hf, migrate):
        with pytest.raises(SystemExit) as exit_info:
            tool.main(["--help"])
        assert exit_info.value.code == 0
        assert "Example" in capsys.readouterr().out  # every tool shows a worked example
    src = hf_models["qwen2"]
    assert to_meg.main(["--hf-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m"), "--no-progress"]) == 1
    assert "nowhere/config.json: missing" in capsys.readouterr().err
    assert to_meg.main(["--hf-dir", str(src), "--out", str(tmp_path / "m"), "--tp", "2", "--dtype", "bf16", "--no-progress"]) == 0
    assert to_hf.main(["--megatron-dir", str(tmp_path / "m"), "--out", str(tmp_path / "h"), "--max-shard-size", "100KB", "--no-progress"]) == 0
    assert len(list((tmp_path / "h").glob("model-*-of-*.safetensors"))) > 1
    assert to_hf.main(["--megatron-dir", str(tmp_path / "m"), "--out", str(tmp_path / "h"), "--no-progress"]) == 1
    assert "output directory exists and is not empty" in capsys.readouterr().err
    assert migrate.main(["--in", str(tmp_path / "m"), "--out", str(tmp_path / "x"), "--no-progress"]) == 1
    assert "megarl_checkpoint.json: missing" in capsys.readouterr().err
