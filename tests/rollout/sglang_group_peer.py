"""A weight-update receiver made by SGLang's own `init_custom_process_group` (as SGLang's weight updater
makes it), run as a separate process by test_sglang_conformance.py.

    python sglang_group_peer.py PORT GROUP_NAME NBYTES TIMEOUT_S

Joins the group as rank 1 of 2 over gloo, receives one broadcast uint8 bucket of NBYTES, and prints
`received <sha256>`; on failure prints `failed <error>` and exits 1.
"""

import datetime
import hashlib
import sys

import torch
from sglang.srt.utils.common import init_custom_process_group


def main() -> int:
    port, group_name, nbytes, timeout_s = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    try:
        group = init_custom_process_group(backend="gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=2, rank=1,
                                          group_name=group_name, timeout=datetime.timedelta(seconds=timeout_s))
        bucket = torch.empty(nbytes, dtype=torch.uint8)
        torch.distributed.broadcast(bucket, src=0, group=group)
    except Exception as err:  # noqa: BLE001 - reported to the test
        print(f"failed {type(err).__name__}: {str(err).splitlines()[0]}", flush=True)
        return 1
    print(f"received {hashlib.sha256(bucket.numpy().tobytes()).hexdigest()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
