"""Weight sync transport: push Hugging Face-named tensors into running rollout servers.

Given `(hf_name, tensor)` pairs (already in Hugging Face layout; gathering them from the
Megatron actor happens before this), `push_weights` packs them into size-bounded, per-dtype
flattened buckets and sends every bucket to every server by one of three transports:

- `tensor`: same host. Each bucket is a fresh buffer in shared memory (CPU) or on the GPU
  (CUDA IPC); the server gets a ForkingPickler handle through `/update_weights_from_tensor`
  with `load_format="flattened_bucket"` and copies from it. Needs the servers' admin token.
- `distributed`: a process group of the trainer (rank 0) and every server rank (gloo on CPU,
  NCCL on GPUs) set up once through `/init_weights_update_group`; each bucket is announced by
  `/update_weights_from_distributed` and broadcast once.
- `disk`: each bucket becomes one safetensors file in a fresh directory (written under a
  temporary name, then renamed whole), loaded through `/update_weights_from_disk`.

One push is SGLang's update protocol, in this order: `/pause_generation`, `/begin_weight_update`, the
updates, `/end_weight_update`, `/flush_cache`, `/update_weight_version` (with `abort_all_requests=false`:
requests continued after a partial-rollout pause must not be aborted again), `/continue_generation`.
SGLang 0.5.23 refuses `/update_weights_from_tensor` and `/update_weights_from_distributed` outside a
begin/end session (`SchedulerWeightUpdaterManager`), so those two transports open one around their
updates; the disk transport does not (SGLang's disk loader restores and post-processes the weights itself,
and a session around it would post-process them twice). The session is closed even when an update fails.

Bucket buffers. On CPU a fresh buffer costs more than the copy itself (a new shared-memory file
and a page fault on every 4 KB page when it is first written), so the pusher keeps a
`BucketPool` of at most two buffers, reused across the buckets of a push: bucket k+1 is packed into
one while bucket k is on the wire from the other, and a buffer goes back to the pool only after
every server has answered for its bucket (CPU servers copy before they answer). On GPUs no buffer is
ever reused: a `tensor` bucket (CUDA IPC; the receiver's copy may still be queued on its stream when it
answers) is kept until the servers have answered `/end_weight_update` and `/flush_cache`, requests they
handle after every copy was issued; a `distributed` bucket is dropped once its broadcast returned (the
caching allocator reuses its block only for work queued after the broadcast on this stream). After every
push no bucket is left alive: the pool is emptied and the kept buffers dropped, so nothing of the sync
stays allocated while the trainer computes. `WeightSyncReport.peak_bucket_bytes` is the most bucket
memory alive at once during the push (`sync_peak_bytes` gives it before a run, for the memory plan).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import weakref
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import torch

from megarl.rollout.weight_buckets import (FlattenedTensorMetadata, dtype_name, pack_into, serialize_payload,
                                          tensor_nbytes)
from megarl.runtime.device import backend as collective_backend
from megarl.runtime.distributed import free_port
from megarl.runtime.device import get_device, is_gpu_device, on_gpu, synchronize
from megarl.rollout.protocol import REQUEST_TIMEOUT_S
from megarl.rollout.transports import SESSION_TRANSPORTS, TRANSPORTS
DEFAULT_BUCKET_BYTES = 512 << 20
POOL_BUFFERS = 2  # CPU: bucket buffers pooled within a push (one packed while the other is on the wire)


class WeightSyncError(RuntimeError):
    """A server refused or failed a weight update; the message names the server and its reason."""


@dataclass
class WeightSyncReport:
    transport: str
    weight_version: str | None
    num_tensors: int = 0
    num_buckets: int = 0
    total_bytes: int = 0
    seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)
    peak_bucket_bytes: int = 0  # the most bucket-buffer bytes alive at once during the push


def iter_buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int
                 ) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group tensors into buckets of one dtype each, at most `bucket_bytes` (a larger tensor goes alone).

    Streams: a bucket is yielded as soon as it is full, so a generator input is never held whole.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes={bucket_bytes} must be positive (e.g. 256 << 20)")
    pending: dict[torch.dtype, tuple[list, int]] = {}
    for name, tensor in named_tensors:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"weight {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
        items, size = pending.get(tensor.dtype, ([], 0))
        nbytes = tensor_nbytes(tensor)
        if items and size + nbytes > bucket_bytes:
            yield items
            items, size = [], 0
        items.append((name, tensor))
        pending[tensor.dtype] = (items, size + nbytes)
    for items, _ in pending.values():
        if items:
            yield items


@contextmanager
def _file_system_sharing():
    """Share CPU tensors by /dev/shm file name, which an unrelated process can open.

    The default fd strategy passes descriptors through a socket guarded by the sender's
    multiprocessing authkey, which an independently started server does not have.
    """
    import torch.multiprocessing as mp

    previous = mp.get_sharing_strategy()
    mp.set_sharing_strategy("file_system")
    try:
        yield
    finally:
        mp.set_sharing_strategy(previous)


def _new_bucket_buffer(nbytes: int, *, shared: bool) -> torch.Tensor:
    """A fresh uint8 buffer: on the GPU, or in CPU shared memory when `shared`."""
    device = get_device()
    if is_gpu_device(device):
        return torch.empty(nbytes, dtype=torch.uint8, device=device)
    if not shared:
        return torch.empty(nbytes, dtype=torch.uint8)
    with _file_system_sharing():
        storage = torch.UntypedStorage._new_shared(nbytes)
    return torch.empty(0, dtype=torch.uint8).set_(storage)


class BucketPool:
    """Reusable CPU bucket buffers (shared memory for `tensor`, private memory for `distributed`).

    `acquire(nbytes)` returns a 1-D uint8 view of exactly `nbytes` over a pooled buffer; the caller
    gives it back with `release` once no server can still read it. A free buffer that is too small
    for a bucket (a tensor larger than the bucket size travels alone) is replaced by a larger one,
    so the pool holds at most `max_buffers` buffers of at most max(bucket size, largest tensor).
    Each buffer is written all over when it is made, so its page faults are paid once, not on
    every bucket.
    """

    def __init__(self, *, shared: bool, min_bytes: int, max_buffers: int = POOL_BUFFERS):
        self.shared, self.min_bytes, self.max_buffers = shared, int(min_bytes), max_buffers
        self.free: list[torch.Tensor] = []
        self.lent: dict[int, torch.Tensor] = {}  # data_ptr of a view -> its whole buffer
        self.allocations = 0  # buffers made so far (tests and benchmarks read it)

    def acquire(self, nbytes: int) -> torch.Tensor:
        fitting = [i for i, b in enumerate(self.free) if b.numel() >= nbytes]
        if fitting:
            buffer = self.free.pop(min(fitting, key=lambda i: self.free[i].numel()))
        else:
            if self.free and len(self.free) + len(self.lent) >= self.max_buffers:
                # too small: make room for a larger one
                self.free.pop(min(range(len(self.free)), key=lambda i: self.free[i].numel()))
            buffer = _new_bucket_buffer(max(nbytes, self.min_bytes), shared=self.shared)
            buffer.zero_()  # touch every page now, once
            self.allocations += 1
        view = buffer[:nbytes]
        self.lent[view.data_ptr()] = buffer
        return view

    def release(self, view: torch.Tensor) -> None:
        buffer = self.lent.pop(view.data_ptr(), None)
        if buffer is None:
            raise ValueError("BucketPool.release got a buffer this pool did not lend (or released it twice)")
        self.free.append(buffer)

    def clear(self) -> None:
        self.free.clear()
        self.lent.clear()

    @property
    def held_bytes(self) -> int:
        return sum(b.numel() for b in self.free) + sum(b.numel() for b in self.lent.values())


def serialize_bucket(buffer: torch.Tensor, metadata: list[FlattenedTensorMetadata], *, use_sglang: bool = False) -> str:
    """One `serialized_named_tensors` entry in SGLang's wire format: a base64 ForkingPickler pickle of
    handles (not data) whose metadata are SGLang's `FlattenedTensorMetadata` (see `weight_buckets`)."""
    if use_sglang and is_gpu_device(buffer.device):
        _sglang_cuda_reductions()
    with _file_system_sharing():
        return serialize_payload(buffer, metadata, use_sglang=use_sglang)


def _sglang_cuda_reductions() -> None:
    """SGLang's receivers read CUDA-IPC handles whose device is a UUID (`monkey_patch_torch_reductions`);
    with sglang installed, send them that way so each server rank opens the bucket on the right GPU."""
    try:
        from sglang.srt.utils.patch_torch import monkey_patch_torch_reductions
    except ImportError:
        return
    monkey_patch_torch_reductions()


def tensor_update_body(payloads: Sequence[str]) -> dict:
    """`/update_weights_from_tensor` JSON: `payloads` holds one entry per server TP rank, each pickled on
    its own (every rank takes its own CUDA-IPC reference; sharing one entry breaks SGLang's refcounting)."""
    return {"serialized_named_tensors": list(payloads), "load_format": "flattened_bucket", "flush_cache": False}


def distributed_update_body(bucket: Sequence[tuple[str, torch.Tensor]], group_name: str) -> dict:
    """`/update_weights_from_distributed` JSON announcing one broadcast flattened bucket."""
    return {"names": [n for n, _ in bucket], "dtypes": [dtype_name(t.dtype) for _, t in bucket],
            "shapes": [list(t.shape) for _, t in bucket], "group_name": group_name,
            "load_format": "flattened_bucket", "flush_cache": False}


def init_group_body(master_address: str, master_port: int, rank_offset: int, world_size: int, group_name: str,
                    backend: str) -> dict:
    """`/init_weights_update_group` JSON for one server (its ranks start at `rank_offset`)."""
    return {"master_address": master_address, "master_port": master_port, "rank_offset": rank_offset,
            "world_size": world_size, "group_name": group_name, "backend": backend}


def disk_update_body(model_path: str) -> dict:
    return {"model_path": model_path, "flush_cache": False}


def version_body(version: str) -> dict:
    """`/update_weight_version` JSON. SGLang's default `abort_all_requests=true` would abort the requests
    a partial rollout continues after the pause; megarl never wants that."""
    return {"new_version": version, "abort_all_requests": False}


def sync_peak_bytes(transport: str, *, bucket_bytes: int, largest_tensor_bytes: int, model_bytes: int,
                    gpu: bool) -> int:
    """The most bucket-buffer memory one push keeps alive at once on the sending rank (what
    `WeightSyncReport.peak_bucket_bytes` measures): on GPUs a `tensor` push keeps every bucket until the
    session ends (the whole model), a `distributed` push one bucket; on CPU the pool's two buffers; a
    `disk` push writes host tensors only. A bucket is at most max(bucket size, largest tensor)."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport {transport!r} is unknown; choose one of {TRANSPORTS}")
    bucket = max(bucket_bytes, largest_tensor_bytes)
    if transport == "disk":
        return 0
    if not gpu:
        return POOL_BUFFERS * bucket
    return model_bytes if transport == "tensor" else bucket


class WeightPusher:
    """Pushes weights to a fixed set of servers; keeps the distributed group between pushes."""

    def __init__(self, servers: Sequence[str], *, transport: str = "tensor", bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                 token: str | None = None, server_tp_size: int = 1, pause_mode: str = "abort",
                 request_timeout_s: float = REQUEST_TIMEOUT_S, master_address: str = "127.0.0.1", master_port: int | None = None,
                 group_name: str = "megarl_weight_update", group_backend: str | None = None,
                 disk_dir: str | None = None, reuse_buffers: bool | None = None, sglang_serializer: bool = False):
        """`reuse_buffers`: pool bucket buffers across the buckets of a push (default: on CPU only, where
        servers finish copying before they answer; never on GPUs, whose copies are asynchronous).
        `sglang_serializer`: write `tensor` payloads with SGLang's own serializer when sglang is importable
        (the trainer sets it for SGLang servers); megarl's encoder writes the same format without sglang."""
        if transport not in TRANSPORTS:
            raise ValueError(f"transport {transport!r} is unknown; choose one of {TRANSPORTS}")
        if not servers:
            raise ValueError("push_weights needs at least one server URL")
        if transport == "tensor" and not token:
            raise ValueError("the tensor transport needs the servers' admin token (token=...): servers accept "
                             "shared-memory handles only with it")
        self.servers = [s.rstrip("/") for s in servers]
        self.transport = transport
        self.bucket_bytes = int(bucket_bytes)
        self.token = token
        if server_tp_size < 1:
            raise ValueError(f"server_tp_size={server_tp_size} must be >= 1 (the servers' tensor-parallel size)")
        self.server_tp_size = server_tp_size
        self.sglang_serializer = sglang_serializer
        self.pause_mode = pause_mode
        self.timeout = request_timeout_s
        self.master_address = master_address
        self.master_port = master_port
        self.group_name = group_name
        self.group_backend = group_backend or collective_backend()
        if transport == "disk" and not disk_dir:
            raise ValueError("the disk transport needs disk_dir=...: a directory every server can read (the trainer "
                             "passes rollout.disk_dir, by default <run dir>/weight_sync on the shared filesystem)")
        self.disk_dir = disk_dir
        self.group = None
        self.retired: list[torch.Tensor] = []  # GPU tensor-transport buffers kept until the session has ended
        self.live_buffers: list[weakref.ref] = []  # the bucket buffers made and maybe not yet freed
        self._report: WeightSyncReport | None = None
        if reuse_buffers is None:
            reuse_buffers = not on_gpu()
        if reuse_buffers and on_gpu():
            raise ValueError("reuse_buffers=True is unsafe on GPUs: a server's copy may still be queued when it "
                             "answers; leave reuse_buffers unset")
        self.buffer_pool = BucketPool(shared=transport == "tensor", min_bytes=self.bucket_bytes) if reuse_buffers else None
        self.pool = ThreadPoolExecutor(max_workers=max(4, 2 * len(self.servers)), thread_name_prefix="weight-sync")

    # ---- HTTP ----------------------------------------------------------------------------
    def _post(self, server: str, path: str, body: dict | None = None) -> dict | str:
        data = json.dumps(body or {}).encode()
        request = urllib.request.Request(server + path, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")
            try:
                detail = json.loads(detail).get("message", detail)
            except (ValueError, AttributeError):
                pass
            raise WeightSyncError(f"{server}{path} answered HTTP {err.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as err:
            raise WeightSyncError(f"{server}{path} failed: {err}") from None
        try:
            result = json.loads(text)
        except ValueError:
            return text
        if isinstance(result, dict) and result.get("success") is False:
            raise WeightSyncError(f"{server}{path} refused the update: {result.get('message')}")
        return result

    def _post_all(self, path: str, body: dict | None = None) -> list[Future]:
        return [self.pool.submit(self._post, server, path, body) for server in self.servers]

    @staticmethod
    def _wait(futures: list[Future]) -> list:
        errors, results = [], []
        for future in futures:
            try:
                results.append(future.result())
            except WeightSyncError as err:
                errors.append(str(err))
        if errors:
            raise WeightSyncError("; ".join(errors))
        return results

    # ---- the push --------------------------------------------------------------------------
    def push(self, named_tensors: Iterable[tuple[str, torch.Tensor]], weight_version: str | int | None = None
             ) -> WeightSyncReport:
        """pause, [init group], begin, updates, end, flush, version, continue (see the module docstring)."""
        version = None if weight_version is None else str(weight_version)
        report = self._report = WeightSyncReport(transport=self.transport, weight_version=version)
        started = time.perf_counter()
        self._wait(self._post_all("/pause_generation", {"mode": self.pause_mode}))
        report.phase_seconds["pause"] = time.perf_counter() - started
        try:
            if self.transport == "distributed" and self.group is None:
                self._init_group()
            send = {"tensor": self._send_tensor, "distributed": self._send_distributed, "disk": self._send_disk}
            try:
                with self._session():
                    send[self.transport](iter_buckets(named_tensors, self.bucket_bytes), report)
                mark = time.perf_counter()
                self._wait(self._post_all("/flush_cache"))
            finally:
                self._release_buckets()  # the servers answered requests they handle after every copy
            if version is not None:
                self._wait(self._post_all("/update_weight_version", version_body(version)))
            report.phase_seconds["finish"] = time.perf_counter() - mark
        finally:
            self._report = None
            self._wait(self._post_all("/continue_generation"))
        report.seconds = time.perf_counter() - started
        return report

    @contextmanager
    def _session(self):
        """SGLang's weight-update session around the updates of a `tensor` or `distributed` push; closed on
        every server that opened it, also when an update failed (its error is the one raised)."""
        if self.transport not in SESSION_TRANSPORTS:
            yield
            return
        futures = self._post_all("/begin_weight_update", {"selector": "all"})
        opened = [server for server, future in zip(self.servers, futures) if future.exception() is None]
        try:
            self._wait(futures)
        except WeightSyncError:
            self._end_session(opened, quiet=True)
            raise
        try:
            yield
        except BaseException:
            self._end_session(opened, quiet=True)
            raise
        self._end_session(opened, quiet=False)

    def _end_session(self, servers: list[str], *, quiet: bool) -> None:
        futures = [self.pool.submit(self._post, server, "/end_weight_update", {}) for server in servers]
        try:
            self._wait(futures)
        except WeightSyncError:
            if not quiet:
                raise

    def _release_buckets(self) -> None:
        """Nothing of the push stays alive: kept GPU buffers dropped, the CPU pool emptied."""
        self.retired.clear()
        if self.buffer_pool is not None:
            self.buffer_pool.clear()

    def _send_tensor(self, buckets: Iterator[list], report: WeightSyncReport) -> None:
        in_flight: tuple[list[Future], torch.Tensor] | None = None  # one bucket on the wire ...
        packed: torch.Tensor | None = None  # ... while the next one is packed
        try:
            for bucket in buckets:
                nbytes = sum(tensor_nbytes(t) for _, t in bucket)
                packed = self._acquire(nbytes, shared=True)
                metadata = pack_into(packed, bucket)
                synchronize()
                payloads = [serialize_bucket(packed, metadata, use_sglang=self.sglang_serializer)
                            for _ in range(self.server_tp_size)]  # one per server TP rank
                if in_flight is not None:
                    sent, in_flight = in_flight, None
                    self._finish(sent)
                    del sent  # no reference may keep a finished bucket's buffer alive
                body = tensor_update_body(payloads)
                in_flight, packed = (self._post_all("/update_weights_from_tensor", body), packed), None
                report.num_buckets += 1
                report.num_tensors += len(bucket)
                report.total_bytes += nbytes
            if in_flight is not None:
                sent, in_flight = in_flight, None
                self._finish(sent)
                del sent  # no reference may keep a finished bucket's buffer alive
        finally:  # after a failure: no buffer goes back to the pool while a server may still read it
            if in_flight is not None:
                try:
                    self._finish(in_flight)
                except WeightSyncError:
                    pass  # the original error is being raised
            if packed is not None:
                self._retire(packed, receiver_may_read=True)

    def _finish(self, in_flight: tuple[list[Future], torch.Tensor]) -> None:
        """Wait until every server answered for a bucket (raising their errors), then retire its buffer."""
        futures, buffer = in_flight
        try:
            self._wait(futures)  # waits for every future, even when one failed
        finally:
            self._retire(buffer, receiver_may_read=True)

    def _acquire(self, nbytes: int, *, shared: bool) -> torch.Tensor:
        if self.buffer_pool is not None:
            view = self.buffer_pool.acquire(nbytes)
        else:
            view = _new_bucket_buffer(nbytes, shared=shared)
        base = view if view._base is None else view._base
        alive = [b for b in (r() for r in self.live_buffers) if b is not None]
        if not any(b is base for b in alive):
            alive.append(base)
        self.live_buffers = [weakref.ref(b) for b in alive]
        if self._report is not None:
            held = sum(b.numel() for b in alive)
            self._report.peak_bucket_bytes = max(self._report.peak_bucket_bytes, held)
        return view

    def _retire(self, buffer: torch.Tensor, *, receiver_may_read: bool) -> None:
        """Every server has answered for this buffer's bucket (or it was never sent)."""
        if self.buffer_pool is not None:  # CPU servers copy before answering: reuse it
            self.buffer_pool.release(buffer)
        elif receiver_may_read and on_gpu():  # a CUDA-IPC reader's copy may still be queued: keep it until the end
            self.retired.append(buffer)

    def _init_group(self) -> None:
        from megarl.rollout.update_group import UpdateGroup

        port = self.master_port or free_port()
        world_size = 1 + len(self.servers) * self.server_tp_size
        futures = [self.pool.submit(self._post, server, "/init_weights_update_group", init_group_body(
            self.master_address, port, 1 + i * self.server_tp_size, world_size, self.group_name, self.group_backend))
            for i, server in enumerate(self.servers)]
        try:
            self.group = UpdateGroup(backend=self.group_backend, master_address=self.master_address, master_port=port,
                                     rank=0, world_size=world_size, group_name=self.group_name, timeout_s=self.timeout)
        except Exception as err:
            detail = [str(f.exception()) for f in futures if f.done() and f.exception()]
            raise WeightSyncError(f"could not form the weight-update group on port {port}: {err}; servers: {detail}") from err
        self._wait(futures)

    def _send_distributed(self, buckets: Iterator[list], report: WeightSyncReport) -> None:
        for bucket in buckets:
            nbytes = sum(tensor_nbytes(t) for _, t in bucket)
            buffer = self._acquire(nbytes, shared=False)
            try:
                pack_into(buffer, bucket)
                synchronize()
                body = distributed_update_body(bucket, self.group_name)
                futures = self._post_all("/update_weights_from_distributed", body)
                try:
                    self.group.broadcast(buffer)
                except Exception as err:
                    detail = [str(f.exception()) for f in futures if f.done() and f.exception()]
                    raise WeightSyncError(f"broadcast of a {nbytes}-byte bucket failed: {err}; servers: {detail}") from err
                self._wait(futures)
            finally:  # the broadcast has returned: later work on this stream is ordered after it
                self._retire(buffer, receiver_may_read=False)
            del buffer  # dropped before the next bucket's buffer is made
            report.num_buckets += 1
            report.num_tensors += len(bucket)
            report.total_bytes += nbytes

    def _send_disk(self, buckets: Iterator[list], report: WeightSyncReport) -> None:
        from safetensors.torch import save_file

        parent = self.disk_dir
        os.makedirs(parent, exist_ok=True)
        partial = tempfile.mkdtemp(prefix=".partial-weights-", dir=parent)
        final = partial.replace(".partial-weights-", "weights-")
        try:
            for index, bucket in enumerate(buckets):
                seen, tensors = set(), {}
                for name, tensor in bucket:
                    tensor = tensor.detach().to("cpu").contiguous()
                    key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
                    tensors[name] = tensor.clone() if key in seen else tensor  # safetensors refuses shared storage
                    seen.add(key)
                save_file(tensors, os.path.join(partial, f"model-{index:05d}.safetensors"))
                report.num_buckets += 1
                report.num_tensors += len(bucket)
                report.total_bytes += sum(tensor_nbytes(t) for _, t in bucket)
            os.replace(partial, final)  # the servers only ever see a complete directory
            self._wait(self._post_all("/update_weights_from_disk", disk_update_body(final)))
        finally:
            shutil.rmtree(partial, ignore_errors=True)
            shutil.rmtree(final, ignore_errors=True)

    def close(self) -> None:
        if self.group is not None:
            try:
                self._wait(self._post_all("/destroy_weights_update_group", {"group_name": self.group_name}))
            finally:
                self.group.close()
                self.group = None
        self.retired.clear()
        if self.buffer_pool is not None:
            self.buffer_pool.clear()
        self.pool.shutdown(wait=True)

    def __enter__(self) -> "WeightPusher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def push_weights(named_tensors: Iterable[tuple[str, torch.Tensor]], servers: Sequence[str], transport: str = "tensor",
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES, weight_version: str | int | None = None,
                 **options) -> WeightSyncReport:
    """Push `(hf_name, tensor)` pairs to every server once (see `WeightPusher` for `options`)."""
    with WeightPusher(servers, transport=transport, bucket_bytes=bucket_bytes, **options) as pusher:
        return pusher.push(named_tensors, weight_version=weight_version)
