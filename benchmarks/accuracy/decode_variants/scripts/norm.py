"""Decode chunk scores with plain means (norm='mean') for dhsa instead of sqrt(n) * mean.

Usage: python norm.py LENGTH BUDGET NORM CELLS
"""

import sys

from cells import answer_cells

import dhsa.hf as hf

length, budget, norm = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
hf.INCREMENTAL_NORMS["dhsa"] = norm
answer_cells({"norm": norm}, length, budget, sys.argv[4])
