"""Record the golden files: run each case and write tests/golden/<case>.jsonl and <case>.yaml.

    PYTHONPATH=src python tests/golden/record.py                 # every case
    PYTHONPATH=src python tests/golden/record.py fedgalore_ajive demo   # these cases
    PYTHONPATH=src python tests/golden/record.py 'fedgalore*'     # shell-style patterns
    PYTHONPATH=src python tests/golden/record.py --list

Only for a deliberate behaviour change, named in the commit that re-records (see README.md).
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import CASES, run_case, write_case  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="cases or patterns (default: all)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(CASES))
        return 0
    names = list(CASES)
    if args.names:
        names = [n for n in CASES if any(fnmatch.fnmatchcase(n, p) for p in args.names)]
        unknown = [p for p in args.names if not any(fnmatch.fnmatchcase(n, p) for n in CASES)]
        if unknown:
            parser.error(f"no case matches {', '.join(unknown)}; cases: {', '.join(CASES)}")
    # what `make test` sets: offline models and data
    for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(key, value)
    for name in names:
        records = run_case(name)
        write_case(name, records)
        print(f"{name}: {len(records)} records", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
