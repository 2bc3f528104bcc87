"""`python -m fleet` and the `fleet` script: SIGINT and SIGTERM are handled before the command loads."""

import sys

from fleet.signals import SIGNALS, Interrupted


def main() -> None:
    SIGNALS.install()
    try:
        try:
            from fleet.cli import cli

            cli()
        finally:
            SIGNALS.raise_pending()  # a command without a loop ran to its end, but was asked to stop
    except Interrupted as interrupted:
        print(f"fleet: {interrupted}", file=sys.stderr)
        sys.exit(128 + interrupted.signum)


if __name__ == "__main__":
    main()
