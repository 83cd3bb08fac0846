"""The fbseg CLI with the tests' tiny open_clip config registered (for torchrun workers)."""
import sys
from pathlib import Path

import open_clip

open_clip.add_model_config(Path(__file__).parent / "configs")

from fbseg_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
