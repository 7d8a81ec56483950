"""Turn a run's JUnit XML and the selection into per-test results, the counts, and the failure causes.

    python summarize.py SELECTION.tsv JUNIT.xml RESULTS.txt [LABEL]

Each in-scope test function gets one outcome from its pytest items (several when parametrized): ``failed`` or
``error`` when any item did (the first message kept), else ``passed`` when any item passed, else ``skipped``; a
function none of whose items ran is ``error`` with its file's collection error, or ``not-run`` without one.
RESULTS.txt gets one line per function: node id, api (public/private), outcome, first line of the error.
"""

import collections
import re
import sys
import xml.etree.ElementTree as ET


def read_selection(path: str) -> dict:
    rows = {}
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            node_id, scope, api, _reason = line.rstrip("\n").split("\t")
            if scope == "in":
                rows[node_id] = api
    return rows


def _first_line(text: str) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()[:240]
    return ""


def read_junit(path: str):
    """(function node id -> list of (outcome, message)), (file -> collection error message)."""
    items = collections.defaultdict(list)
    collection_errors = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        classname, name, file = case.get("classname", ""), case.get("name", ""), case.get("file", "")
        problem = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        if not classname and problem is not None and problem.tag == "error":  # the file did not import
            module_file = name.replace(".", "/") + ".py"
            collection_errors[module_file] = _error_line(problem)
            continue
        module = file[:-3].replace("/", ".") if file else ""
        cls = classname[len(module) + 1:] if module and classname.startswith(module + ".") else ""
        node_id = "::".join(p for p in (file, cls, name.split("[")[0]) if p)
        if problem is None:
            items[node_id].append(("passed", ""))
        elif problem.tag == "skipped":
            items[node_id].append(("skipped", _first_line(problem.get("message", ""))))
        else:
            items[node_id].append(("failed" if problem.tag == "failure" else "error", _error_line(problem)))
    return items, collection_errors


def _error_line(problem) -> str:
    """The exception line of a failure: ``E   Type: message`` in the traceback, else its last line."""
    text = problem.text or ""
    for line in text.splitlines():
        if line.startswith("E   ") and line[4:].strip():
            return line[4:].strip()[:240]
    last = [line.strip() for line in text.splitlines() if line.strip()]
    return last[-1][:240] if last else _first_line(problem.get("message", ""))


def outcome(node_id: str, items: dict, collection_errors: dict):
    results = items.get(node_id, [])
    for kind in ("failed", "error"):
        bad = [message for outcome_, message in results if outcome_ == kind]
        if bad:
            return kind, bad[0]
    if any(o == "passed" for o, _ in results):
        return "passed", ""
    if results:
        return "skipped", results[0][1]
    file = node_id.split("::")[0]
    if file in collection_errors:
        return "error", "collection: " + collection_errors[file]
    return "not-run", ""


def cause(message: str) -> str:
    """A message with its particulars (numbers, addresses, paths) blanked, to group by."""
    text = re.sub(r"^collection: ", "", message)
    text = re.sub(r"0x[0-9a-f]+", "0x…", text)
    text = re.sub(r"/[\w./-]+", "/…", text)
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    return text[:110]


def main(argv: list) -> int:
    if len(argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    selection = read_selection(argv[1])
    items, collection_errors = read_junit(argv[2])
    label = argv[4] if len(argv) == 5 else ""
    rows = [(node_id, api, *outcome(node_id, items, collection_errors)) for node_id, api in selection.items()]
    with open(argv[3], "w", encoding="utf-8") as out:
        out.write("# node_id\tapi\toutcome\tfirst line of the error\n")
        for row in rows:
            out.write("\t".join(row) + "\n")

    def counts(subset):
        return collections.Counter(r[2] for r in subset)

    public = [r for r in rows if r[1] == "public"]
    print(f"{label} in scope: {len(rows)} test functions, {len(public)} of them public-API")
    for name, subset in (("public-API", public), ("all in-scope", rows)):
        c = counts(subset)
        print(
            f"{label} {name}: {c['passed']} of {len(subset)} passed ({100 * c['passed'] / max(len(subset), 1):.1f}%);"
            f" failed {c['failed']}, error {c['error']}, skipped {c['skipped']}, not run {c['not-run']}"
        )
    causes = collections.Counter()
    example = {}
    for node_id, _api, result, message in public:
        if result in ("failed", "error"):
            key = cause(message)
            causes[key] += 1
            example.setdefault(key, node_id)
    print(f"\n{label} public-API failures by cause (top 20 of {len(causes)}):")
    for key, n in causes.most_common(20):
        print(f"{n:5d}  {key}\n       e.g. {example[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
