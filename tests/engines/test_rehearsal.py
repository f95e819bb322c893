"""Two cells of the paper table's rehearsal on a CPU (the GSM8K SFT+EAST cell of each model:
the 1B cell on one process, the 8B cell under DeepSpeed ZeRO-3 on two, as the real 8B cells
shard), in the engines tier, where DeepSpeed is installed; tests/integration/test_rehearsal.py
holds the test and the whole table (-m slow)."""

from __future__ import annotations

from tests.integration.test_rehearsal import pytestmark as _needs
from tests.integration.test_rehearsal import test_rehearsal_of_two_cells as _two_cells

pytestmark = _needs


def test_two_rehearsal_cells_with_the_8b_cell_under_zero3(tmp_path, shared_data):
    _two_cells(tmp_path, shared_data)
