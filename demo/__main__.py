"""``python -m demo``: README's first command (``--engine`` runs the quick engine-only demo)."""

import sys

if __name__ == "__main__":
    if "--engine" in sys.argv[1:]:
        from demo.engine_demo import run

        run()
    else:
        from demo.run import main

        main()
