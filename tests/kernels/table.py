"""The kernel matrix's outcome as markdown (docs/kernels.md holds it between markers).

    python3 tests/kernels/table.py RESULTS_DIR NAME...

Reads each guest's `flowtel status` (RESULTS_DIR/NAME/status.txt) and test output, and
prints one table of features by kernel (what attached, through which hook, or why not)
and one line of test counts per kernel.
"""
import re
import sys
from pathlib import Path


def features(status: str) -> dict:
    """The `features:` block of `flowtel status`: name -> summary."""
    block = status.split("features:\n", 1)[1].split("probes:\n", 1)[0] if "features:\n" in status else ""
    found = {}
    for line in block.splitlines():
        name, _, summary = line.strip().partition(" ")
        found[name] = summary.strip()
    return found


def cell(summary: str) -> str:
    """A short table cell: the hook kinds attached, or the reason it failed."""
    if summary.startswith("attached: "):
        return "yes: " + summary[len("attached: "):].split(" (", 1)[0]
    if not summary:
        return "?"
    reason = summary.removeprefix("failed: ")
    # The verifier's first line is register state; its last says why.
    reason = re.sub(r"verifier: .*? \.\.\. ", "verifier: ", reason)
    reason = re.sub(r"\s+", " ", reason).replace("|", "\\|")
    return "no: " + (reason if len(reason) <= 120 else reason[:117] + "...")


def main() -> None:
    out, names = Path(sys.argv[1]), sys.argv[2:]
    columns = []
    for name in names:
        results = out / name
        status = (results / "status.txt").read_text() if (results / "status.txt").exists() else ""
        release = (results / "uname").read_text().strip() if (results / "uname").exists() else name
        log = (results / "tests.log").read_text() if (results / "tests.log").exists() else ""
        passed = sum(int(m) for m in re.findall(r"^test result: \w+\. (\d+) passed", log, re.M))
        failed = sum(int(m) for m in re.findall(r"; (\d+) failed", log))
        columns.append((name, release, features(status), passed, failed))
    order = []
    for _, _, found, _, _ in columns:
        order += [name for name in found if name not in order]
    # Columns by matrix name: the suite's kernel may move on (a security update), and
    # what each feature does on that line is what the table asserts.
    print("| feature | " + " | ".join(name for name, *_ in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for feature in order:
        print(f"| {feature} | " + " | ".join(cell(found.get(feature, "")) for _, _, found, _, _ in columns) + " |")
    print()
    for name, release, _, passed, failed in columns:
        print(f"- {name}: {release}, end-to-end subset {passed} passed, {failed} failed")


if __name__ == "__main__":
    main()
