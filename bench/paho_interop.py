"""Run the Eclipse Paho MQTT interoperability suite against a broker, one test per process.

The suite (eclipse/paho.mqtt.testing, `interoperability/`) is not part of this repository: clone it
and point --suite at its `interoperability` folder. Each test runs in its own process with a
timeout, because the suite hangs on some failures. The broker must already listen on --port, with
an ACL that denies subscriptions to `test/nosubscribe`, and, for the MQTT 5 suite, with
`--max-keepalive 60` (its `test_server_keep_alive` expects Server Keep Alive 60):

    .venv/bin/python bench/paho_interop.py --suite ../paho.mqtt.testing/interoperability \\
        --port 1883 --version 5
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import time
from pathlib import Path


def _tests(script: Path) -> list[str]:
    tree = ast.parse(script.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Test":
            methods = [f.name for f in node.body if isinstance(f, ast.FunctionDef)]
            return [name for name in methods if name.startswith("test_")]
    raise SystemExit(f"{script}: no class Test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, required=True, help="the suite's interoperability folder")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument(
        "--version", choices=["3", "5"], default="5", help="3: client_test.py; 5: client_test5.py"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per test")
    parser.add_argument("tests", nargs="*", help="test names (default: all)")
    args = parser.parse_args()
    script = args.suite / ("client_test5.py" if args.version == "5" else "client_test.py")
    names = args.tests or _tests(script)
    passed = 0
    for name in names:
        # client_test.py hands its own options to unittest.main, which refuses them: run the script with
        # unittest.main told to run this one test.
        code = (
            "import runpy, sys, unittest; sys.argv = sys.argv[1:]; main = unittest.main; "
            f"unittest.main = lambda *a, **k: main(*a, argv=[sys.argv[0], 'Test.{name}'], **k); "
            "runpy.run_path(sys.argv[0], run_name='__main__')"
        )
        argv = [sys.executable, "-c", code, script.name, "-p", str(args.port)]
        started = time.monotonic()
        try:
            done = subprocess.run(
                argv, check=False, cwd=args.suite, capture_output=True, text=True, timeout=args.timeout
            )
            result = "pass" if done.returncode == 0 else "FAIL"
            detail = "" if done.returncode == 0 else done.stderr.strip().splitlines()[-1:]
        except subprocess.TimeoutExpired:
            result, detail = "HANG", [f"no result within {args.timeout:.0f}s"]
        passed += result == "pass"
        print(f"{name:<36} {result}  {time.monotonic() - started:5.1f}s  {' '.join(detail)}", flush=True)
    print(f"{passed}/{len(names)} passed")
    sys.exit(0 if passed == len(names) else 1)


if __name__ == "__main__":
    main()
