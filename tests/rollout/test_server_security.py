"""The built-in server's security (issue 13, item 1): no code execution through a weight payload,
admin tokens never on a command line, no unauthenticated admin endpoints beyond loopback."""

from __future__ import annotations

import base64
import os
import pickle
import subprocess
import sys

from rollout_helpers import SERVER_TOKEN, ServerProcess, http_json


class RunsACommand:
    """A pickle that runs a shell command when loaded by plain `pickle.loads`."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_pickle_is_refused_and_runs_nothing(tiny_model_dir, tmp_path):
    marker = tmp_path / "pwned"
    payload = base64.b64encode(pickle.dumps(RunsACommand(f"touch {marker}"))).decode()
    server = ServerProcess(tiny_model_dir)
    try:
        # inside a weight-update session, as a sender must be (outside one the update is refused unread)
        assert http_json(server.url + "/begin_weight_update", {}, token=SERVER_TOKEN)[0] == 200
        for load_format in ("flattened_bucket", None):
            status, out = http_json(server.url + "/update_weights_from_tensor",
                                    {"serialized_named_tensors": [payload], "load_format": load_format}, token=SERVER_TOKEN)
            assert not marker.exists(), "the payload's command ran inside the server"
            assert 400 <= status < 500 and "Blocked unsafe global (posix.system)" in out["message"], (status, out)
        # the server keeps serving
        status, _ = http_json(server.url + "/generate", {"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 1}})
        assert status == 200
        # and the token is not on its command line
        cmdline = open(f"/proc/{server.proc.pid}/cmdline", "rb").read().decode()
        assert SERVER_TOKEN not in cmdline
    finally:
        server.stop()


def test_trainer_started_servers_keep_the_token_off_the_command_line(tiny_model_dir, tmp_path):
    from megarl.rollout.fleet import start_servers

    group = start_servers("builtin", tiny_model_dir, 1, tmp_path / "logs")
    try:
        pid = group.processes[0].pid
        assert group.admin_token and group.admin_token not in open(f"/proc/{pid}/cmdline", "rb").read().decode()
        assert group.admin_token not in " ".join(group.processes[0].args)
        status, _ = http_json(group.server_urls[0] + "/update_weight_version", {"new_version": "x"})
        assert status == 401  # admin endpoints need the token ...
        status, _ = http_json(group.server_urls[0] + "/update_weight_version", {"new_version": "x"}, token=group.admin_token)
        assert status == 200  # ... which reached the server through its environment
    finally:
        group.stop()


def serve(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k != "MEGARL_SERVE_TOKEN"}, **(env or {})}
    return subprocess.run([sys.executable, "-m", "megarl.rollout.serve_cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_token_on_the_command_line_is_refused(tiny_model_dir):
    out = serve("--model", tiny_model_dir, "--token", "secret")
    assert out.returncode == 2 and "MEGARL_SERVE_TOKEN" in out.stderr and "--token-file" in out.stderr


def test_token_file_readable_by_others_is_refused(tiny_model_dir, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("secret\n")
    token_file.chmod(0o644)
    out = serve("--model", tiny_model_dir, "--token-file", str(token_file))
    assert out.returncode == 2 and "chmod 600" in out.stderr


def test_binding_beyond_loopback_needs_a_token(tiny_model_dir):
    out = serve("--model", tiny_model_dir, "--host", "0.0.0.0", "--port", "0")
    assert out.returncode == 2 and "without an admin token" in out.stderr and "MEGARL_SERVE_TOKEN" in out.stderr


def test_token_file_is_accepted(tiny_model_dir, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("file-token-1\n")
    token_file.chmod(0o600)
    server = ServerProcess(tiny_model_dir, token=None, extra=["--token-file", str(token_file)])
    try:
        assert http_json(server.url + "/flush_cache", {}, token="file-token-1")[0] == 200
        assert http_json(server.url + "/flush_cache", {})[0] == 401
    finally:
        server.stop()
