"""Rollout: the SGLang client and launcher, megarl's built-in CPU rollout server, and weight sync.

Modules (imported on demand; this package imports nothing heavy):
- `client`: `RolloutClient` - async HTTP to SGLang-protocol servers with failover.
- `server`: the built-in HTTP server (`megarl serve`), speaking SGLang's protocol subset.
- `engine`: the batched generation loop the built-in server runs (KV cache, sampling).
- `weight_buckets`: the flattened-bucket tensor format shared by sender and server.
- `weight_sync`: `push_weights` - bucketed weight transport (tensor / distributed / disk).
- `fleet`: server lifecycle - builds built-in and SGLang (and sglang-router) commands, starts them,
  waits for `/health`, stops them; used by the trainer, the CLIs and the Slurm launch.
- `admin_token`: per-run admin tokens, handed over by environment or a 0600 file.
"""
