"""kdbench's public Python API: run suites from code and write method plugins.

``import kdbench; result = kdbench.run(suite="digits", methods=["kd"], budget="smoke",
seeds=1)`` returns the leaderboard as a pandas DataFrame (``result.board``) and the run
records (``result.records``); a plugin imports ``Method``, ``RunContext``, ``Compressed``,
``METHODS`` and ``check_contract`` from here.

kdbench is the one import root: the project's folders ``benchmarks/`` (the harness),
``methods/``, ``detection/`` and ``reid/`` import as ``kdbench.benchmarks``,
``kdbench.methods``, ... (pyproject.toml maps them, for editable and normal installs).
"""

from pathlib import Path as _Path

# In a source checkout the project's folders sit beside this package (installed, they are
# inside it): the checkout joins the package's path, so kdbench.benchmarks, kdbench.methods,
# ... import from this very tree (e.g. a scaffolded copy), not from another one installed.
_here = _Path(__file__).resolve().parent
if not (_here / "benchmarks").is_dir() and (_here.parent / "benchmarks" / "__init__.py").is_file():
    __path__.append(str(_here.parent))

from kdbench.benchmarks import __version__
from kdbench.benchmarks.api import RunResult, run
from kdbench.benchmarks.contract import check_contract
from kdbench.benchmarks.method import Compressed, Method, RunContext
from kdbench.benchmarks.options import RunOptions
from kdbench.benchmarks.registry import METHODS

__all__ = ["METHODS", "Compressed", "Method", "RunContext", "RunOptions", "RunResult",
           "__version__", "check_contract", "run"]
