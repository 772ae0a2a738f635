"""The experiment guide's entry point: `python main.py key=value ...` (see ltsei.cli.guide_main)."""
import sys

if __name__ == "__main__":
    try:
        from ltsei.cli import guide_main
        rc = guide_main()
    except KeyboardInterrupt:        # Ctrl-C while starting up: one line, no traceback
        print("interrupted (Ctrl-C)", file=sys.stderr)
        rc = 130
    sys.exit(rc)
