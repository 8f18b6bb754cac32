"""Test setup for kernels/: run Triton kernels in its CPU interpreter unless the caller chose otherwise.

TRITON_INTERPRET must be set before triton is first imported, hence at conftest import time.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
