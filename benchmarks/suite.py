"""The layer suite of ``python -m jconv bench``, runnable from a checkout.

    python benchmarks/suite.py                       # every case, float32
    python benchmarks/suite.py --cases depthwise3x3,conv3d_3x3x3 --repeat 9
    python benchmarks/suite.py --dtype bfloat16 --out bench-bf16

See ``jconv/bench.py`` for what is timed and how.
"""

import sys

from jconv.bench import main

if __name__ == "__main__":
    sys.exit(main())
