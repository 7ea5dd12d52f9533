"""NIAH gemma3 with dhsa, a lower boundary threshold (DHSAConfig.boundary_z): more, shorter chunks.

Usage: python threshold.py LENGTH BUDGET Z CELLS
"""

import sys

from cells import answer_cells

length, budget, z = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
answer_cells({"boundary_z": z}, length, budget, sys.argv[4], boundary_z=z)
