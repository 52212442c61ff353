"""`python -m fedsub ...`: the `fedsub` command, wherever the console script is not installed."""

import sys

from fedsub.app.cli import main

sys.exit(main())
