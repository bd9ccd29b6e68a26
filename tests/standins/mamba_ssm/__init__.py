"""Stand-in for mamba-ssm (tests only; see tests/standins/README.md)."""

import collections

__version__ = "0.0.0+standin"
CALLS = collections.Counter()  # function name -> number of calls
