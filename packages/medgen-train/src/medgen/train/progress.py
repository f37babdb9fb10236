"""Whether progress bars are shown: never with ``--quiet`` / ``MEDGEN_QUIET=1``; otherwise
tqdm decides (bars on a TTY, none in a log file)."""

from __future__ import annotations

import os


def bars_disabled(quiet: bool = False) -> bool | None:
    """``True`` to hide bars; ``None`` lets tqdm hide them when stderr is not a TTY."""
    if quiet or os.environ.get("MEDGEN_QUIET", "") not in ("", "0"):
        return True
    return None
