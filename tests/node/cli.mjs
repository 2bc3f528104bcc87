// What the client scripts share: one JSON value per stdout line, a bounded run, a reason on failure.
//
// Every script prints `{"ready":true}` once it is connected (and subscribed, where that is separate),
// then one line per message it receives; it exits 0 after the number of messages it was asked for,
// and 1 with a reason on stderr on a timeout, an error or an early end.

import path from "node:path";
import process from "node:process";

/** The script's name, for messages on stderr. */
const NAME = process.argv[1] ? path.basename(process.argv[1]) : "client";

let exiting = false;

/** Print one line to stdout: a JSON value, or text that already is one JSON value. */
export function emit(value) {
  if (exiting) {
    return;
  }
  const line = typeof value === "string" ? value : JSON.stringify(value);
  if (line.includes("\n")) {
    fail(`refusing to print a line break inside one JSON line: ${JSON.stringify(line)}`);
    return;
  }
  process.stdout.write(`${line}\n`);
}

/** Exit with `code` once stdout has been written out. */
export function exit(code) {
  if (exiting) {
    return;
  }
  exiting = true;
  process.stdout.write("", () => process.exit(code));
}

/** Exit 1 with `reason` on stderr. */
export function fail(reason) {
  if (exiting) {
    return;
  }
  process.stderr.write(`${NAME}: ${reason}\n`);
  exit(1);
}

/** The arguments after the script's path, or exit 2 with `usageText` unless there are `min` to `max`. */
export function args(usageText, min, max) {
  const given = process.argv.slice(2);
  if (given.length < min || given.length > max) {
    usageError(usageText);
  }
  return given;
}

function usageError(text) {
  process.stderr.write(`usage: node ${NAME} ${text}\n`);
  process.exit(2);
}

/** An integer >= 0 from the command line, or exit 2 saying what is wrong. */
export function integer(raw, what) {
  const value = Number(raw);
  if (raw === "" || !Number.isSafeInteger(value) || value < 0) {
    process.stderr.write(`${NAME}: ${what} must be an integer >= 0, got ${JSON.stringify(raw)}\n`);
    process.exit(2);
  }
  return value;
}

/** Fail after `timeoutMs` unless the script exits first; `progress()` says how far it got. */
export function deadline(timeoutMs, progress) {
  setTimeout(() => fail(`timed out after ${timeoutMs} ms: ${progress()}`), timeoutMs);
}

/** Each line written to stdin, as it arrives (stdin may be closed: then none). */
export function onStdinLine(callback) {
  let buffered = "";
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (chunk) => {
    buffered += chunk;
    let index;
    while ((index = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, index).replace(/\r$/, "");
      buffered = buffered.slice(index + 1);
      if (line) {
        callback(line);
      }
    }
  });
  process.stdin.on("error", () => {});
}

process.on("uncaughtException", (error) => fail(`uncaught ${error?.stack ?? error}`));
process.on("unhandledRejection", (error) => fail(`unhandled rejection ${error?.stack ?? error}`));
