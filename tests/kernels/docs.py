"""Checks or rewrites the kernel matrix's table in docs/kernels.md.

    python3 tests/kernels/docs.py check|write DOC TABLE

The table sits between `<!-- matrix:begin -->` and `<!-- matrix:end -->`.
"""
import sys
from pathlib import Path

BEGIN, END = "<!-- matrix:begin -->\n", "<!-- matrix:end -->"


def main() -> int:
    mode, doc, table = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]).read_text()
    text = doc.read_text()
    head, rest = text.split(BEGIN, 1)
    current, tail = rest.split(END, 1)
    if mode == "write":
        doc.write_text(head + BEGIN + table + END + tail)
        return 0
    # The table rows are compared; the lines under it name the exact releases and test
    # counts of the run that wrote them, which move with Debian's updates.
    rows = lambda text: [line for line in text.splitlines() if line.startswith("|")]  # noqa: E731
    if rows(current) != rows(table):
        print("docs/kernels.md says:\n" + current + "\nthe matrix showed:\n" + table, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
