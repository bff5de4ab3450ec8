"""Run every ``benchmarks/bench_*.py`` module's ``main()``, in name order; exit 1 if any
returns a nonzero status (a target it checks was missed)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main() -> int:
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    failed = []
    for name in names:
        print(f"== {name}", flush=True)
        if importlib.import_module(f"benchmarks.{name}").main():  # a nonzero status: missed
            failed.append(name)
    if failed:
        print(f"targets missed in: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
