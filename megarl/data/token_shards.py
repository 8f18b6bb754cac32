"""Tokenized prompt shards: one int32 .npy file per prompt, for the torch and DALI loaders.

Layout of a shard folder: `prompts/000000000.npy ...` (each holds [record_index, token ids...]:
the index travels with the tokens, so a loader that reads files in any order still knows which
problem and gold answer a row belongs to), `index.jsonl` (id, answer, length, file per record,
in record order) and `meta.json` (template, tokenizer, count). Written to a temporary folder and
renamed into place, so a half-written folder never looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from megarl.data.loading import PromptRecord
from megarl.data.templates import render_prompt


def write_token_shards(
    records: Sequence[PromptRecord], tokenizer: Any, template: str, out_dir: str | os.PathLike, max_prompt_tokens: int | None = None
) -> Path:
    """Render, tokenize and write every record; prompts longer than max_prompt_tokens are skipped."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; remove it or choose another --out folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    temp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        (temp_dir / "prompts").mkdir()
        index_rows, skipped = [], 0
        for record in records:
            prompt = render_prompt(template, record.problem, tokenizer)
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
                skipped += 1
                continue
            position = len(index_rows)
            file_name = f"{position:09d}.npy"
            np.save(temp_dir / "prompts" / file_name, np.asarray([position, *ids], dtype=np.int32))
            index_rows.append({"id": record.id, "answer": record.answer, "length": len(ids), "file": file_name})
        with open(temp_dir / "index.jsonl", "w", encoding="utf-8") as handle:
            for row in index_rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        meta = {"template": template, "tokenizer": getattr(tokenizer, "name_or_path", ""), "count": len(index_rows),
                "skipped_too_long": skipped, "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0}
        (temp_dir / "meta.json").write_text(json.dumps(meta, indent=1))
        os.replace(temp_dir, out_dir)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return out_dir


def read_shard_index(shard_dir: str | os.PathLike) -> tuple[list[dict], dict]:
    shard_dir = Path(shard_dir)
    if not (shard_dir / "meta.json").is_file():
        raise FileNotFoundError(f"{shard_dir} is not a token shard folder (no meta.json); write one with write_token_shards")
    index = [json.loads(line) for line in (shard_dir / "index.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return index, json.loads((shard_dir / "meta.json").read_text())


class TokenShardDataset(torch.utils.data.Dataset):
    """Torch dataset over a shard folder: item = (record_index, token ids tensor)."""

    def __init__(self, shard_dir: str | os.PathLike):
        self.shard_dir = Path(shard_dir)
        self.index, self.meta = read_shard_index(shard_dir)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor]:
        array = np.load(self.shard_dir / "prompts" / self.index[position]["file"])
        return int(array[0]), torch.from_numpy(array[1:].astype(np.int64))


def pad_token_batch(items: list[tuple[int, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Dense batch: tokens [B, max_len] right-padded, lengths [B], record indices [B]."""
    lengths = torch.tensor([len(ids) for _, ids in items], dtype=torch.int64)
    tokens = torch.full((len(items), int(lengths.max())), pad_token_id, dtype=torch.int64)
    for row, (_, ids) in enumerate(items):
        tokens[row, : len(ids)] = ids
    return {"tokens": tokens, "lengths": lengths, "indices": torch.tensor([i for i, _ in items], dtype=torch.int64)}


def torch_token_loader(
    shard_dir: str | os.PathLike, batch_size: int, dp_rank: int = 0, dp_size: int = 1, seed: int = 0, epoch: int = 0
) -> torch.utils.data.DataLoader:
    """The default loader for token shards (DistributedSampler per rank, shuffled by seed+epoch)."""
    dataset = TokenShardDataset(shard_dir)
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=dp_size, rank=dp_rank, shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    pad = int(dataset.meta["pad_token_id"])
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
                                       collate_fn=lambda items: pad_token_batch(items, pad))
