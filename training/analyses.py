"""The papers' analyses on the models ``training.ship`` trains, written to assets/results/.

    python -m training.analyses                  # every recipe with an [analyses] table
    python -m training.analyses --task MRPC --dry-run

Each recipe's ``[analyses]`` table adds training stages (more of DACT's tau grid, DPBERT's
target-rate sweep and soft-gate ablation) and the commands that evaluate them (``commands``:
``python -m`` module command lines, with ``{run}`` the task's run folder and ``{slug}`` its short
name). The ship stages are trained first when they are not yet; finished stages are skipped.
"""

from __future__ import annotations

import sys

from core.errors import command_line
from training.ship import main_runner


@command_line
def main(argv: list[str] | None = None) -> int:
    return main_runner(__doc__, "python -m training.analyses", analyses=True, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
