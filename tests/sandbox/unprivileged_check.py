"""Runs hostile programs through megarl's sandbox as an unprivileged user; prints the findings as JSON.

Started by test_sandbox_unprivileged.py (as root, under `setpriv` to a uid of its own), because the
rest of the suite runs as whatever user CI is (root there), and non-root users get a different
bubblewrap set-up: a user namespace instead of a dropped uid. Standard library only.
Usage: unprivileged_check.py SOURCE_ROOT LOOPBACK_PORT SECRET (SOURCE_ROOT holds megarl/sandbox)
"""

import json
import os
import sys
import threading
import time

sys.path.insert(0, sys.argv[1])
from megarl.sandbox import SandboxLimits, SandboxPool  # noqa: E402

PORT, SECRET = int(sys.argv[2]), sys.argv[3]


def my_processes() -> int:
    count = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                count += os.stat(f"/proc/{name}").st_uid == os.getuid()
            except OSError:
                pass
    return count


def main() -> None:
    found = {"uid": os.getuid()}
    with open("secret.txt", "w") as f:
        f.write(SECRET)
    with SandboxPool(workers=1, limits=SandboxLimits(timeout_s=2.5, memory_mb=256, max_processes=16)) as pool:
        baseline = my_processes()  # this script, bwrap, the worker
        peak = [0]
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                peak[0] = max(peak[0], my_processes() - baseline)
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        bomb = pool.run("import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.01)")
        stop.set()
        watcher.join()
        found["fork_bomb"] = {"status": bomb.status, "peak_extra_processes": peak[0]}
        found["after_bomb_processes"] = my_processes() - baseline
        forge = pool.run("for p in ('/proc/1/fd/1', '/proc/1/mem'):\n    try:\n        open(p, 'w')\n"
                         "        print(p, 'OPENED')\n    except OSError as e:\n        print(p, type(e).__name__)")
        found["forge"] = forge.stdout
        found["kill_parent"] = pool.run("import os\nos.kill(os.getppid(), 9)\nos.kill(1, 9)\nos.killpg(0, 9)").status
        found["after_kill"] = pool.run("print('alive')").stdout
        net = pool.run(f"import socket\ns = socket.socket()\ns.settimeout(1)\ntry:\n    s.connect(('127.0.0.1', {PORT}))\n"
                       "    print('CONNECTED')\nexcept OSError as e:\n    print(type(e).__name__)")
        found["loopback"] = net.stdout
        peek = pool.run(f"import os\nprint(dict(os.environ))\nprint(os.path.exists({os.getcwd()!r}))\n"
                        f"print(open({os.path.abspath('secret.txt')!r}).read() if os.path.exists({os.path.abspath('secret.txt')!r}) else 'absent')")
        found["peek"] = peek.stdout
        write = pool.run(f"import os\nfor d in ('/', '/usr', {os.getcwd()!r}, '/tmp'):\n    print(d, os.access(d, os.W_OK))")
        found["write"] = write.stdout
        nested = pool.run("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                          "print('NESTED' if libc.unshare(0x10000000) == 0 else ctypes.get_errno())")  # CLONE_NEWUSER
        found["nested_userns"] = nested.stdout
    print(json.dumps(found))


if __name__ == "__main__":
    main()
