"""NIAH gemma3 with dhsa, chunk boundaries per layer (DHSAConfig.share_boundaries=False).

Usage: python perlayer.py LENGTH BUDGET CELLS
"""

import sys

from cells import answer_cells

length, budget = int(sys.argv[1]), int(sys.argv[2])
answer_cells({"boundaries": "per-layer"}, length, budget, sys.argv[3], share_boundaries=False)
