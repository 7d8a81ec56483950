"""One table of a torchplug run and the reference run: node id, api, torchplug's outcome, Lightning's, torchplug's error.

    python merge_results.py HEADER_LINES_FILE TORCHPLUG_RESULTS.txt [ORACLE_RESULTS.txt] > results-DATE.txt

HEADER_LINES_FILE (e.g. a run's summary.txt) is copied first as ``#`` comments; without ORACLE_RESULTS the
Lightning column says ``not-run``.
"""

import sys


def read(path: str) -> dict:
    with open(path, encoding="utf-8") as lines:
        return {row[0]: row for row in (line.rstrip("\n").split("\t") for line in lines if not line.startswith("#"))}


def main(argv: list) -> int:
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as header:
        for line in header:
            print("# " + line.rstrip("\n"))
    torchplug = read(argv[2])
    oracle = read(argv[3]) if len(argv) == 4 else {}
    print("# node_id\tapi\ttorchplug\tlightning\tfirst line of torchplug's error")
    for node_id, (_, api, outcome, message) in torchplug.items():
        reference = oracle[node_id][2] if node_id in oracle else "not-run"
        print("\t".join((node_id, api, outcome, reference, message)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
