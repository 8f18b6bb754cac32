"""The built-in server's weight receiver: loads weight updates into the engine, as SGLang's server does.

Three routes, each ending in `GenerationEngine.load_weights` (which checks every name, shape and
dtype before copying, under the engine's model lock, so no batch sees half an update):
- disk: `*.safetensors` files in a directory (`load_from_disk`; no session needed, as SGLang's
  disk loader restores and post-processes the weights itself);
- tensor: SGLang's wire format of shared-memory handles, read through an allow-list unpickler
  (`weight_buckets.load_payload`), plain or as flattened buckets (`load_tensors`);
- distributed: a torch.distributed update group the trainer broadcasts into (`init_group`,
  `receive`, `destroy_group`).

Weight-update session (SGLang 0.5.23's `SchedulerWeightUpdaterManager`, same messages): tensor and
distributed updates are refused unless they run between `begin` and `end`; a second begin, or an
end without a begin, is refused (`SessionRefused`, answered as SGLang's HTTP server does).

Kept between the buckets of one update and dropped by `release_buffers` (at /continue_generation):
the mappings of the sender's most recent shared-memory buckets (a sender that reuses its buffers
then costs no new mapping and no page faults per bucket) and the distributed transport's receive buffer.
"""

from __future__ import annotations

import collections
import threading

import torch

from megarl.rollout.engine import GenerationEngine
from megarl.rollout.protocol import RequestError
from megarl.rollout.update_group import DEFAULT_GROUP_NAME, UpdateGroup
from megarl.rollout.weight_buckets import layout_metadata, load_payload, unpack
from megarl.runtime.device import is_gpu_device, synchronize

# SGLang 0.5.23's weight-update session messages (managers/scheduler_components/weight_updater.py)
SESSION_REQUIRED = "{endpoint} must run between begin_weight_update() and end_weight_update()"
SESSION_ALREADY_OPEN = "a weight-update session is already open; call end_weight_update() first"
SESSION_NOT_OPEN = "no weight-update session is open; call begin_weight_update() first"
SESSION_SELECTORS = ("target", "draft", "all")  # SGLang's BeginWeightUpdateReqInput.selector
TENSOR_LOAD_FORMATS = (None, "direct", "flattened_bucket")


class SessionRefused(Exception):
    """SGLang's weight updater refused the call (answered with {"success": false, "message"} and HTTP 400)."""


class WeightReceiver:
    """Weight updates for one engine: the session, the update groups and the buffers kept between buckets."""

    def __init__(self, engine: GenerationEngine):
        self.engine = engine
        self.update_groups: dict[str, UpdateGroup] = {}
        self.session_selector: str | None = None  # the open session's selector (None: no session)
        self.update_lock = threading.Lock()
        self.held_buckets: collections.deque = collections.deque(maxlen=4)
        self.receive_buffer: torch.Tensor | None = None

    # ---- session -----------------------------------------------------------------------
    def begin(self, selector: str) -> None:
        if selector not in SESSION_SELECTORS:
            raise RequestError(f"selector {selector!r} is unknown; use one of {SESSION_SELECTORS}")
        if self.session_selector is not None:  # called on the event loop's thread: no lock needed
            raise SessionRefused(SESSION_ALREADY_OPEN)
        self.session_selector = selector

    def end(self) -> None:
        if self.session_selector is None:
            raise SessionRefused(SESSION_NOT_OPEN)
        self.session_selector = None

    def require_session(self, endpoint: str) -> None:
        if self.session_selector is None:
            raise SessionRefused(SESSION_REQUIRED.format(endpoint=endpoint))

    def set_version(self, version) -> None:
        with self.engine.model_lock:
            self.engine.weight_version = str(version)

    def release_buffers(self) -> None:
        """The update is over: let go of the sender's buffers and the receive buffer."""
        with self.update_lock:
            self.held_buckets.clear()
            self.receive_buffer = None

    # ---- the three routes (blocking: run them off the event loop) ---------------------------
    def load_from_disk(self, model_path: str) -> int:
        return self.engine.load_weights_from_disk(model_path)

    def load_tensors(self, payloads: list, load_format: str | None) -> int:
        """One update_weights_from_tensor call: `payloads`, one base64 payload per server TP rank (1 here)."""
        if not isinstance(payloads, list) or not payloads or not all(isinstance(p, str) for p in payloads):
            raise RequestError("serialized_named_tensors must be a list with one base64 payload per server TP rank")
        if len(payloads) != 1:
            raise RequestError(f"serialized_named_tensors has {len(payloads)} entries but the built-in server has "
                             "tp_size 1: send one payload (server_tp_size=1)")
        if load_format not in TENSOR_LOAD_FORMATS:
            raise RequestError(f"load_format {load_format!r} is not supported; use null, 'direct' or 'flattened_bucket'")
        with self.update_lock:
            data = load_payload(payloads[0])  # SGLang's wire format: shared-memory / CUDA-IPC handles
            if load_format == "flattened_bucket":
                if not isinstance(data, dict) or "flattened_tensor" not in data or "metadata" not in data:
                    raise ValueError("a flattened_bucket payload must be {'flattened_tensor': uint8 tensor, 'metadata': [...]}")
                named = unpack(data["flattened_tensor"], data["metadata"])
                # Keep the mapping (not the bytes: the copy below is done before we answer) so the
                # sender's next bucket in the same buffer maps for free; dropped by release_buffers.
                if data["flattened_tensor"].device.type == "cpu":
                    self.held_buckets.append(data["flattened_tensor"])
            else:
                named = list(data)
            return self.engine.load_weights(named)

    def init_group(self, body: dict) -> str:
        """Join the update group of an init_weights_update_group body; returns its name."""
        missing = [k for k in ("master_address", "master_port", "rank_offset", "world_size") if k not in body]
        if missing:
            raise RequestError(f"init_weights_update_group is missing {missing}")
        name = body.get("group_name", DEFAULT_GROUP_NAME)
        if name in self.update_groups:
            raise RequestError(f"weight update group {name!r} already exists; destroy it first")
        self.update_groups[name] = UpdateGroup(
            backend=body.get("backend", "gloo"), master_address=body["master_address"], master_port=int(body["master_port"]),
            rank=int(body["rank_offset"]), world_size=int(body["world_size"]), group_name=name,
            timeout_s=float(body.get("timeout_s", 120.0)))
        return name

    def destroy_group(self, name: str) -> None:
        group = self.update_groups.pop(name, None)
        if group is None:
            raise RequestError(f"no weight update group named {name!r}")
        group.close()

    def group(self, name: str) -> UpdateGroup:
        group = self.update_groups.get(name)
        if group is None:
            raise RequestError(f"weight update group {name!r} does not exist; call /init_weights_update_group first")
        return group

    def receive(self, body: dict) -> int:
        """One update_weights_from_distributed call: the tensors `body` names, broadcast by the trainer."""
        group = self.group(body.get("group_name", DEFAULT_GROUP_NAME))
        names, dtypes, shapes = body.get("names"), body.get("dtypes"), body.get("shapes")
        if not isinstance(names, list) or not names:
            raise RequestError("update_weights_from_distributed needs non-empty names, dtypes and shapes lists")
        metadata = layout_metadata(names, dtypes, shapes)
        with self.update_lock:
            if body.get("load_format") == "flattened_bucket":
                buffer = self._receive_buffer(metadata[-1].end_idx, group.device)
                group.broadcast(buffer)
                named = unpack(buffer, metadata)
            else:
                named = []
                for meta in metadata:
                    tensor = torch.empty(meta.shape, dtype=meta.dtype, device=group.device)
                    group.broadcast(tensor)
                    named.append((meta.name, tensor))
            count = self.engine.load_weights(named)
            if is_gpu_device(group.device):
                synchronize()  # the copy out of the receive buffer is done before it is reused
            return count

    def _receive_buffer(self, nbytes: int, device: torch.device) -> torch.Tensor:
        """A uint8 buffer of `nbytes` for a broadcast bucket, reused until release_buffers."""
        buffer = self.receive_buffer
        if buffer is None or buffer.numel() < nbytes or buffer.device != device:
            buffer = self.receive_buffer = None  # free the old one before making a larger one
            buffer = self.receive_buffer = torch.empty(nbytes, dtype=torch.uint8, device=device)
        return buffer[:nbytes]
