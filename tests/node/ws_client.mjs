// A WebSocket client of the bridge's `/ws`, on the `ws` package.
//
//   node ws_client.mjs <url> <count> <timeoutMs> [message ...]
//
// Once open it prints {"ready":true} and sends each `message` argument as a text frame, in order, then
// each line that arrives on stdin. It prints every frame it receives (each must be JSON text) as one
// line, exactly as received, and exits 0 after <count> frames; 1 on a timeout, an error, a non-JSON
// or binary frame, or a close before that.

import WebSocket from "ws";

import { args, deadline, emit, exit, fail, integer, onStdinLine } from "./cli.mjs";

const [url, rawCount, rawTimeout, ...messages] = args("<url> <count> <timeoutMs> [message ...]", 3, Infinity);
const count = integer(rawCount, "count");
const timeoutMs = integer(rawTimeout, "timeoutMs");

let received = 0;
deadline(timeoutMs, () => `received ${received} of ${count} messages from ${url}`);

const socket = new WebSocket(url);

socket.on("open", () => {
  emit({ ready: true });
  for (const message of messages) {
    socket.send(message);
  }
  onStdinLine((line) => socket.send(line));
  if (count === 0) {
    socket.close(1000, "done");
    exit(0);
  }
});

socket.on("message", (data, isBinary) => {
  if (isBinary) {
    fail(`a binary frame of ${data.length} bytes: the bridge sends JSON text`);
    return;
  }
  const text = data.toString("utf8");
  try {
    JSON.parse(text);
  } catch (error) {
    fail(`a frame that is not JSON (${error.message}): ${JSON.stringify(text)}`);
    return;
  }
  emit(text);
  received += 1;
  if (received === count) {
    socket.close(1000, "done");
    exit(0);
  }
});

socket.on("close", (code, reason) => {
  fail(`closed with code ${code} (${reason.toString() || "no reason"}) after ${received} of ${count} messages`);
});

socket.on("error", (error) => fail(`WebSocket error: ${error.message}`));
