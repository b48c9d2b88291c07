"""`python -m linkage`, and the `linkage` command (pyproject's script entry point).

The command line is imported when it runs, not when this module is imported: the
processes `audit verify` starts to check a large log import the script that started
them (multiprocessing does, to find what its main module defined), and the command
line's imports (gRPC, protobuf, cryptography: about a quarter of a second) would
otherwise be paid again in each of them, before any entry is checked.
"""

import sys


def run() -> int:
    from linkage.cli.main import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
