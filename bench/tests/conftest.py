"""The benchmarks' tests: bench/ and the repository root importable, one CPU thread per test (as tests/)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from tests.conftest import _quiet_threads  # noqa: E402,F401  (an autouse fixture: registered by the import)
