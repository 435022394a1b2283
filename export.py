"""`python export.py --model mat`: the same as `edgestack export mat`."""

import argparse
import sys

from edgestack.cli import add_export_arguments, cmd_export, run


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Export a model to an edgestack bundle (see `edgestack export -h`).")
    p.add_argument("--model", default="mat", help="model or config name (default: mat, see `edgestack models`)")
    add_export_arguments(p)
    p.set_defaults(func=cmd_export)
    return p


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:], parser()))
