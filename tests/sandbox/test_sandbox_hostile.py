"""Hostile programs against the tool sandbox: each test proves that nothing escapes and nothing is left running.

`clean_pool` checks after every test that each sandbox holds only its idle worker and that no process
of a sandbox uid runs anywhere else on the host.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import threading
import time

import psutil
from sandbox_helpers import assert_all_gone, pool_processes

from megarl.sandbox import SandboxLimits, SandboxPool


def test_infinite_loop_times_out_with_its_escaped_children(clean_pool):
    # The loop forks a child that leaves the process group (setsid) and a grandchild that is orphaned:
    # the wall-clock kill must still take all three.
    code = """
import os
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        while True: pass
    os._exit(0)
while True: pass
"""
    start = time.monotonic()
    result = clean_pool.run(code, timeout_s=1.5)
    assert result.status == "timeout", result
    assert "wall-clock" in result.detail
    assert time.monotonic() - start < 1.5 + 5


def test_cpu_time_limit(clean_pool):
    result = clean_pool.run("while True: pass", limits=SandboxLimits(timeout_s=20, cpu_s=1, memory_mb=256,
                                                                     output_bytes=clean_pool.limits.output_bytes))
    assert result.status == "timeout" and "CPU-time" in result.detail, result
    assert result.seconds < 15


def test_memory_bomb_stops_at_the_limit_and_the_host_is_unaffected(clean_pool):
    host_rss = psutil.Process().memory_info().rss
    code = "chunks = []\nwhile True:\n    chunks.append(b\"x\" * (8 << 20))  # touched pages: resident, not just reserved\n"
    result = clean_pool.run(code, memory_mb=200)
    assert result.status in ("error", "killed"), result
    assert "MemoryError" in result.stderr
    assert result.peak_memory_mb <= 200, result  # its resident peak stayed under the address-space cap
    assert result.peak_memory_mb > 100, result  # it did allocate: the limit, not something else, stopped it
    assert psutil.Process().memory_info().rss - host_rss < 50 << 20
    assert clean_pool.run("print('after')").stdout == "after\n"


def test_fork_bomb_is_held_to_the_process_limit(clean_pool):
    limit = clean_pool.limits.max_processes
    code = """
import os, time
while True:
    try:
        os.fork()
    except OSError:
        time.sleep(0.01)
"""
    peak = [0]
    stop = threading.Event()

    def watch():  # count every process in any of the pool's sandboxes while the bomb runs
        while not stop.is_set():
            peak[0] = max(peak[0], max(len(below) for below in pool_processes(clean_pool).values()))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = clean_pool.run(code, timeout_s=2.5)
    finally:
        stop.set()
        watcher.join()
    assert result.status == "timeout", result
    assert limit // 2 < peak[0] <= limit + 1, f"peak {peak[0]} processes in one sandbox (limit {limit} + its worker)"


def test_loopback_and_network_are_unreachable(clean_pool):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract_name = f"\0megarl-sandbox-test-{secrets.token_hex(4)}"
    abstract.bind(abstract_name)
    abstract.listen()
    abstract.settimeout(0.2)
    accepted = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            for listener in (server, abstract):
                try:
                    accepted.append(listener.accept())
                except (socket.timeout, OSError):
                    pass

    thread = threading.Thread(target=serve)
    thread.start()
    code = f"""
import json, socket
out = {{"interfaces": [name for _, name in socket.if_nameindex()]}}
for label, family, address in [("loopback", socket.AF_INET, ("127.0.0.1", {port})),
                               ("loopback6", socket.AF_INET6, ("::1", {port})),
                               ("abstract", socket.AF_UNIX, {abstract_name!r}),
                               ("internet", socket.AF_INET, ("1.1.1.1", 53))]:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(1)
    try:
        s.connect(address)
        out[label] = "CONNECTED"
    except OSError as err:
        out[label] = type(err).__name__
print(json.dumps(out))
"""
    try:
        result = clean_pool.run(code)
    finally:
        stop.set()
        thread.join()
        server.close()
        abstract.close()
    assert result.status == "ok", result
    seen = json.loads(result.stdout)
    assert seen["interfaces"] == ["lo"], seen
    for label in ("loopback", "loopback6", "abstract", "internet"):
        assert seen[label] != "CONNECTED", seen
    assert accepted == []


def test_writes_outside_the_private_tmp_fail_and_tmp_is_private(clean_pool, tmp_path):
    marker = f"megarl-sandbox-{secrets.token_hex(4)}"
    code = f"""
import json, os
out = {{}}
for target in [{str(tmp_path / 'escape.txt')!r}, "/escape.txt", "/usr/escape.txt", {os.path.realpath(os.getcwd())!r} + "/escape.txt",
               "/sandbox/worker.py", "/proc/sys/kernel/hostname"]:
    try:
        with open(target, "w") as f:
            f.write("escaped")
        out[target] = "WROTE"
    except OSError as err:
        out[target] = type(err).__name__
writable = []
for root, dirs, _ in os.walk("/"):
    if root.startswith("/proc"):
        dirs[:] = []
        continue
    if root != "/" and os.statvfs(root).f_flag & os.ST_RDONLY:
        dirs[:] = []  # a read-only mount (/usr, the interpreter): nothing below it is writable
        continue
    if os.access(root, os.W_OK):
        writable.append(root)
out["writable_dirs"] = writable
with open("/tmp/{marker}", "w") as f:
    f.write("inside")
os.makedirs("/tmp/keep/locked")
os.chmod("/tmp/keep", 0)
print(json.dumps(out))
"""
    result = clean_pool.run(code)
    assert result.status == "ok", result
    seen = json.loads(result.stdout)
    assert seen.pop("writable_dirs") == ["/tmp"], seen
    assert all(outcome != "WROTE" for outcome in seen.values()), seen
    assert not (tmp_path / "escape.txt").exists()
    assert not os.path.exists("/escape.txt") and not os.path.exists(f"/tmp/{marker}")
    assert not os.path.exists(os.path.join(os.getcwd(), "escape.txt"))
    # the next call, on whichever worker, starts with an empty /tmp: its own program only, and the
    # folder leading to the interpreter's read-only prefix when that lies under /tmp (a CI clone's venv)
    prefixes = {sys.prefix, sys.base_prefix}
    mounts = sorted({p.split("/")[2] for p in prefixes if p.startswith("/tmp/")})
    for _ in range(clean_pool.workers):
        after = clean_pool.run("import os; print(sorted(os.listdir('/tmp')))")
        assert after.stdout == f"{sorted(['main.py', *mounts])}\n", after


def test_the_runs_files_and_secrets_are_invisible(tmp_path, monkeypatch):
    token = secrets.token_hex(16)
    monkeypatch.setenv("MEGARL_TEST_SECRET", token)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "secret.txt").write_text(token)
    monkeypatch.chdir(run_dir)
    code = f"""
import glob, os
print(dict(os.environ))
print(os.getcwd(), os.path.exists({str(run_dir)!r}), os.path.exists(os.path.expanduser("~root")))
for path in [{str(run_dir / 'secret.txt')!r}, "secret.txt", "/root/.bash_history", "/etc/shadow", "/etc/passwd"]:
    try:
        print(path, open(path).read())
    except OSError as err:
        print(path, type(err).__name__)
for path in glob.glob("/proc/*/environ") + glob.glob("/proc/*/cmdline"):
    try:
        print(path, open(path, "rb").read())
    except OSError as err:
        print(path, type(err).__name__)
print(os.listdir("/"), os.listdir("/proc"))
"""
    with SandboxPool(workers=1) as fresh:  # started with the secret in its environment and cwd
        pids, uids = fresh.worker_pids(), set(fresh.worker_uids())
        result = fresh.run(code)
    assert_all_gone(pids, uids)
    assert result.status == "ok", result
    assert token not in result.stdout + result.stderr
    assert "MEGARL_TEST_SECRET" not in result.stdout
    assert f"{run_dir} False" not in result.stdout  # cwd is the sandbox's own /tmp
    assert "/tmp False False" in result.stdout
    assert "/etc/passwd FileNotFoundError" in result.stdout


def test_killing_its_parent_or_everything_spares_the_pool_and_the_host(clean_pool):
    workers_before = clean_pool.worker_pids()
    code = f"""
import os, signal
for target in (os.getppid(), 1, {os.getpid()}, {os.getppid()}):
    try:
        os.kill(target, signal.SIGKILL)
    except OSError as err:
        print(target, type(err).__name__)
try:
    os.kill(-1, signal.SIGKILL)  # everything it can signal in its namespace
except ProcessLookupError:
    pass
print("still here", flush=True)
os.killpg(os.getpgid(0), signal.SIGKILL)
"""
    result = clean_pool.run(code)
    assert result.status == "killed" and result.exit_code == -9, result
    assert "still here" in result.stdout
    assert psutil.Process().is_running()
    assert clean_pool.worker_pids() == workers_before  # the same workers: nothing was lost
    assert [r.stdout for r in clean_pool.map(["print(1)", "print(2)"])] == ["1\n", "2\n"]


def test_forging_the_workers_answer_is_impossible(clean_pool):
    fake = json.dumps({"status": "ok", "stdout": "FORGED", "stderr": "", "seconds": 0, "exit_code": 0,
                       "stdout_truncated": False, "stderr_truncated": False, "peak_memory_mb": 0,
                       "detail": "", "retire": False})
    code = f"""
for path in ("/proc/1/fd/1", "/proc/1/mem", "/proc/1/fd/0"):
    try:
        with open(path, "w") as f:
            f.write({fake!r} + "\\n")
        print(path, "OPENED")
    except OSError as err:
        print(path, type(err).__name__)
"""
    result = clean_pool.run(code)
    assert result.status == "ok" and "OPENED" not in result.stdout, result
    assert result.stdout.count("PermissionError") == 3, result
    assert clean_pool.run("print('real')").stdout == "real\n"


def test_huge_output_is_truncated_without_host_memory_growth(clean_pool):
    host_rss = psutil.Process().memory_info().rss
    limit = clean_pool.limits.output_bytes
    endless = clean_pool.run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n    sys.stderr.write('y' * 65536)",
                             timeout_s=1.5)
    assert endless.status == "timeout", endless.detail
    assert endless.stdout == "x" * limit and endless.stdout_truncated
    assert endless.stderr == "y" * limit and endless.stderr_truncated
    finite = clean_pool.run("print('z' * 50_000_000)")
    assert finite.status == "ok" and finite.stdout == "z" * limit and finite.stdout_truncated, finite.detail
    big_file = clean_pool.run("open('/tmp/big', 'wb').write(b'0' * (64 << 20))")
    assert big_file.status in ("killed", "error") and big_file.exit_code in (-25, 1), big_file  # SIGXFSZ or EFBIG
    assert psutil.Process().memory_info().rss - host_rss < 50 << 20
