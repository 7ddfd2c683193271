"""One rank under torch's elastic agent: ``python -m modelfab.factory.distributed.rank JOB_DIR``.

Kept apart from ``worker`` so that running it as ``__main__`` does not import it twice.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> None:
    job_dir = Path(sys.argv[1])
    sys.path[:0] = [p for p in json.loads((job_dir / "sys_path.json").read_text()) if p not in sys.path]
    from modelfab.factory.distributed.worker import run_job

    run_job(
        job_dir,
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        init_process_group=True,
    )


if __name__ == "__main__":
    main()
