"""NIAH gemma3 with dhsa, decode variant: a smaller minimum chunk (DHSAConfig.min_chunk).

Usage: python minchunk.py LENGTH BUDGET MIN_CHUNK CELLS
"""

import sys

from cells import answer_cells

length, budget, min_chunk = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
answer_cells({"min_chunk": min_chunk}, length, budget, sys.argv[4], min_chunk=min_chunk)
