"""kdbench's public Python API: run suites from code and write method plugins.

``import kdbench; result = kdbench.run(suite="digits", methods=["kd"], budget="smoke",
seeds=1)`` returns the leaderboard as a pandas DataFrame (``result.board``) and the run
records (``result.records``); a plugin imports ``Method``, ``RunContext``, ``Compressed``,
``METHODS`` and ``check_contract`` from here.
"""

from benchmarks import __version__
from benchmarks.api import RunResult, run
from benchmarks.contract import check_contract
from benchmarks.method import Compressed, Method, RunContext
from benchmarks.registry import METHODS

__all__ = ["METHODS", "Compressed", "Method", "RunContext", "RunResult", "__version__",
           "check_contract", "run"]
