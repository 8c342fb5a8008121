"""``python -m demo``: run the demo on the embedded default."""

from demo.engine_demo import run

if __name__ == "__main__":
    run()
