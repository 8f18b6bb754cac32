"""Rollout: the SGLang client and launcher, megarl's built-in CPU rollout server, and weight sync.

Modules (imported on demand; this package imports nothing heavy):
- `protocol`: the vocabulary - `SamplingParams` (client, server and engine alike) and the rollout defaults.
- `engines`: the engine table (builtin, sglang): command, weight serializer, TP, GPU need, health timeout.
- `client`: `RolloutClient` - async HTTP to SGLang-protocol servers with failover.
- `server`: the built-in HTTP server (`megarl serve`), speaking SGLang's protocol subset, in front of
  `scheduler` (the worker thread that batches /generate jobs) and `weight_receiver` (weight updates).
- `engine`: the batched generation loop the built-in server runs (KV cache, sampling).
- `weight_buckets`: the flattened-bucket tensor format shared by sender and server.
- `weight_sync`: `push_weights` - bucketed weight transport (tensor / distributed / disk).
- `commands`: each engine's server command line; `fleet`: `ServerFleet`, the servers a run uses, and
  starting, health-waiting and stopping them (the trainer, the CLIs and the Slurm launch).
- `admin_token`: per-run admin tokens, handed over by environment or a 0600 file.
"""
