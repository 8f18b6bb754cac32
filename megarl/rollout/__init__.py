"""Rollout: the SGLang client and launcher, megarl's built-in CPU rollout server, and weight sync.

Modules (imported on demand; this package imports nothing heavy):
- `client`: `RolloutClient` - async HTTP to SGLang-protocol servers with failover.
- `server`: the built-in HTTP server (`megarl serve`), speaking SGLang's protocol subset.
- `engine`: the batched generation loop the built-in server runs (KV cache, sampling).
- `weight_buckets`: the flattened-bucket tensor format shared by sender and server.
- `weight_sync`: `push_weights` - bucketed weight transport (tensor / distributed / disk).
- `sglang_launcher`: builds and runs `sglang.launch_server` and `sglang_router` commands.
"""
