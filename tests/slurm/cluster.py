"""A real, throw-away Slurm cluster on this host for tests: munged, slurmctld and two slurmd
daemons (nodes n1 and n2, both NodeAddr=127.0.0.1, distinct ports) in a private temp directory.

    with LocalSlurmCluster() as cluster:
        job = cluster.sbatch(["--wait", "job.sbatch"], timeout=120)
        cluster.run(["squeue"])            # any Slurm client command, with SLURM_CONF set

Everything it starts has its own socket, ports, state and log files, so it can run next to
other Slurm daemons on the same machine. It stops only the processes it started, by PID.
Needs root (slurmd runs jobs as any user; munged is started as the `munge` user) and Debian's
`slurm-wlm` and `munge` packages; `why_unavailable()` says why the cluster cannot start here.
Every client call that can queue or hang runs under a timeout.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

NODE_NAMES = ("n1", "n2")
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "srun")


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/usr/bin", "/sbin") if (p := Path(d) / name).is_file()), None
    )


def why_unavailable() -> str | None:
    """None when a local cluster can start here; otherwise the reason (for pytest.skip)."""
    if os.geteuid() != 0:
        return "the local Slurm cluster needs root (slurmd, munged as the munge user)"
    missing = [name for name in DAEMONS if _which(name) is None]
    if missing:
        return (f"Slurm/munge not installed (missing {', '.join(missing)}); "
                "install with: apt-get install -y slurm-wlm munge")
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no 'munge' user (the munge package creates it)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCommandError(RuntimeError):
    pass


class LocalSlurmCluster:
    """Start with `start()` (or a `with` block); `stop()` ends the daemons it started by PID."""

    def __init__(self, root: str | Path | None = None, cpus_per_node: int = 2, start_timeout_s: float = 60.0):
        self.root = Path(root or tempfile.mkdtemp(prefix="megarl-slurm-"))
        self.cpus_per_node = cpus_per_node
        self.start_timeout_s = start_timeout_s
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf_path = self.root / "etc" / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.partition = "debug"
        self.submitted: list[str] = []

    # ---- environment for client commands ---------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ, SLURM_CONF=str(self.conf_path))
        for key in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and k != "SLURM_CONF"]:
            env.pop(key)
        return env

    def run(self, args: list[str], timeout: float = 30.0, check: bool = True,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster under `timeout` (sbatch passes
        `extra_env` on to the job)."""
        try:
            proc = subprocess.run(args, env=dict(self.env, **(extra_env or {})), capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise SlurmCommandError(f"{' '.join(args)} did not finish within {timeout:.0f} s") from err
        if check and proc.returncode != 0:
            raise SlurmCommandError(f"{' '.join(args)} failed (rc={proc.returncode}): {proc.stdout}{proc.stderr}")
        return proc

    # ---- lifecycle ----------------------------------------------------------------------------
    def _write_files(self) -> None:
        munge = pwd.getpwnam("munge")
        os.chmod(self.root, 0o755)  # munged (the munge user) must reach its own subdirectory
        for sub in ("etc", "state", "log", "spool", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        munge_dir = self.root / "munge"
        munge_dir.mkdir(exist_ok=True)
        key = munge_dir / "munge.key"
        subprocess.run([_which("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True, timeout=30)
        for path in (munge_dir, key):
            os.chown(path, munge.pw_uid, munge.pw_gid)
        os.chmod(munge_dir, 0o755)
        os.chmod(key, 0o600)

        host = socket.gethostname().split(".")[0]
        self.ports = {"ctld": _free_port(), **{name: _free_port() for name in NODE_NAMES}}
        nodes = "\n".join(
            f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={self.ports[name]} "
            f"CPUs={self.cpus_per_node} State=UNKNOWN"
            for name in NODE_NAMES
        )
        r = self.root
        self.conf_path.write_text(f"""# megarl test cluster (tests/slurm/cluster.py): two emulated nodes on one host
ClusterName=megarltest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={self.ports['ctld']}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
MinJobAge=300
SchedulerParameters=sched_interval=2,bf_interval=2
{nodes}
PartitionName={self.partition} Nodes={','.join(NODE_NAMES)} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
""")

    def _spawn(self, name: str, args: list[str], user: str | None = None) -> None:
        log = open(self.root / "log" / f"{name}.stdout", "ab")
        if user:
            args = ["runuser", "-u", user, "--", *args]
        self.procs[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)

    def start(self) -> "LocalSlurmCluster":
        reason = why_unavailable()
        if reason:
            raise RuntimeError(reason)
        self._write_files()
        try:
            m = self.root / "munge"
            self._spawn("munged", [_which("munged"), "--foreground", f"--socket={self.munge_socket}",
                                   f"--key-file={m / 'munge.key'}", f"--pid-file={m / 'munged.pid'}",
                                   f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'munged.seed'}"], user="munge")
            self._wait(lambda: self.munge_socket.exists(), "munged's socket", "munged")
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf_path)])
            self._wait(self._controller_up, "slurmctld answering", "slurmctld")
            for name in NODE_NAMES:
                self._spawn(f"slurmd-{name}", [_which("slurmd"), "-D", "-N", name, "-f", str(self.conf_path)])
            self._wait(self._nodes_idle, "both nodes idle", "slurmd-n1")
        except BaseException:
            self.stop()
            raise
        return self

    def _controller_up(self) -> bool:
        return self.run(["scontrol", "ping"], timeout=10, check=False).returncode == 0

    def node_states(self) -> dict[str, str]:
        out = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], timeout=10, check=False).stdout
        return dict(line.split()[:2] for line in out.splitlines() if len(line.split()) >= 2)

    def _nodes_idle(self) -> bool:
        states = self.node_states()
        return all(states.get(name) == "idle" for name in NODE_NAMES)

    def _wait(self, ready, what: str, proc_name: str) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while not ready():
            proc = self.procs.get(proc_name)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{proc_name} exited with code {proc.returncode} before {what}:\n{self.logs_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {self.start_timeout_s:.0f} s:\n{self.logs_tail()}")
            time.sleep(0.3)

    def logs_tail(self, chars: int = 3000) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")) + [self.root / "munge" / "munged.log"]:
            if path.is_file():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel this cluster's jobs, then stop its daemons (SIGTERM, then SIGKILL) by PID."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            jobs = self.run(["squeue", "-h", "-o", "%i"], timeout=10, check=False).stdout.split()
            if jobs:
                self.run(["scancel", *jobs], timeout=10, check=False)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and self.run(["squeue", "-h", "-o", "%i"], timeout=10, check=False).stdout.strip():
                    time.sleep(0.5)
        order = [n for n in self.procs if n.startswith("slurmd")] + ["slurmctld", "munged"]
        for name in order:
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.procs.clear()

    def __enter__(self) -> "LocalSlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- jobs -----------------------------------------------------------------------------------
    def job_state(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -o ID` as a dict (JobState, RestartCnt, ExitCode, NodeList, ...)."""
        out = self.run(["scontrol", "show", "job", "-o", job_id], timeout=10).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait_for_job(self, job_id: str, states: tuple[str, ...] = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"),
                     timeout: float = 120.0, poll_s: float = 0.5) -> dict[str, str]:
        """Poll until the job reaches one of `states`; return its fields. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job_state(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(poll_s)
        raise TimeoutError(f"job {job_id} not in {states} within {timeout:.0f} s (last: {info.get('JobState')})")
