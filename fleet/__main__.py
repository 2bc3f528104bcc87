"""`python -m fleet` and the `fleet` script: SIGINT and SIGTERM are handled before the command loads."""

import sys

from fleet.signals import SIGNALS, Interrupted, signal_name


def main() -> None:
    SIGNALS.install()
    try:
        from fleet.cli import cli

        cli()
    except Interrupted as interrupted:
        name = signal_name(interrupted.signum)
        if interrupted.before:
            print(f"fleet: stopped by {name} before anything started", file=sys.stderr)
        else:
            print(f"fleet: a second {name} cut the shutdown short", file=sys.stderr)
        sys.exit(128 + interrupted.signum)


if __name__ == "__main__":
    main()
