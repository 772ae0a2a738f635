"""The experiment guide's entry point: `python main.py key=value ...` (see ltsei.cli.guide_main)."""
import sys

from ltsei.cli import guide_main

if __name__ == "__main__":
    sys.exit(guide_main())
