"""The ablation grid: named variants x seeds, each cell a real train.sh + val.sh run, compared with
a reference variant (tools/ablate.py is its command line, tools/demo.py a one-seed grid).

variants  what a variant is, the built-in ones, a user's file of them, the order of a grid
grid      the cells: commands, specs, reuse of recorded cells, running them (side by side with jobs)
report    the figures: last and best-on-test, paired differences, curves, the schedule rule
progress  where a grid stands (--status): each cell's state, epochs, mIoU so far, time left
bootstrap per-image confusion matrices of a cell, for the bootstrap over the test images
robustness_grid  the cells under corrupted test inputs (--corrupt): per-cell rows, paired differences
"""
from .grid import (CELL_LOG, CELL_RESULT, CELL_SPEC, Cell, CellFailed, check_cells, plan_cells, plan_grid, run_grid)
from . import report
from .report import RESULTS_FILE, TABLE_FILE, CURVES_FILE, grid_record, read_results, summarise, write_report
from .variants import BUILT_IN_VARIANTS, RGB_TEACHER, GridError, Variant, grid_order, load_variants_file

__all__ = ['CELL_LOG', 'CELL_RESULT', 'CELL_SPEC', 'Cell', 'CellFailed', 'check_cells', 'plan_cells', 'plan_grid', 'run_grid',
           'report', 'RESULTS_FILE', 'TABLE_FILE', 'CURVES_FILE', 'grid_record', 'read_results', 'summarise',
           'write_report', 'BUILT_IN_VARIANTS', 'RGB_TEACHER', 'GridError', 'Variant', 'grid_order',
           'load_variants_file']
