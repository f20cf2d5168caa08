"""Method plugins. Every module in this package is imported, and so registered, on load.

Adding a method means adding one file here; nothing else needs editing.
"""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "common":
        importlib.import_module(f"{__name__}.{_info.name}")
