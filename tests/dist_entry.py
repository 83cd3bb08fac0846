"""The fbseg CLI with the tests' tiny open_clip config registered (for torchrun workers).

FBSEG_TEST_KILL_RANK=R makes rank R die abruptly (no cleanup, as a crash or an OOM kill
would) when it starts its second batch of images.
"""

import os
import sys
from pathlib import Path

import open_clip

open_clip.add_model_config(Path(__file__).parent / "configs")

from fbseg_cli import main  # noqa: E402


def _die_on_second_batch() -> None:
    from fbseg.pipeline.segmenter import Segmenter

    real = Segmenter.segment_batch
    calls = {"n": 0}

    def segment_batch(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            os._exit(17)
        return real(self, *a, **k)

    Segmenter.segment_batch = segment_batch


if __name__ == "__main__":
    if os.environ.get("FBSEG_TEST_KILL_RANK") == os.environ.get("RANK", "0"):
        _die_on_second_batch()
    sys.exit(main())
