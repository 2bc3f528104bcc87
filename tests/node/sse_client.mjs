// A Server-Sent Events client of the bridge's `/events`, on the `eventsource` package (WHATWG API).
//
//   node sse_client.mjs <url> <count> <timeoutMs> [lastEventId]
//
// With `lastEventId`, the first request sends it as the Last-Event-ID header (to resume a stream
// another client read); on a reconnect EventSource sends the id of the last event it saw itself.
// Prints {"ready":true} each time the stream opens, {"reconnecting":true,"message":...} when it
// drops and EventSource will reconnect, and {"id":...,"event":...,"data":...} for each event, with
// `data` the text as received. Exits 0 after <count> events; 1 on a timeout or when EventSource
// gives up (a non-200 answer, for one).

import { EventSource } from "eventsource";

import { args, deadline, emit, exit, fail, integer } from "./cli.mjs";

// EventSource dispatches an event named by its `event:` field to the listeners of that name only.
// These are the names the bridge sends (bridges/app.py), and `message` for events without a name.
const EVENT_NAMES = ["telemetry", "status", "ack", "raw", "bridge", "dropped", "reset", "message"];

const [url, rawCount, rawTimeout, lastEventId] = args("<url> <count> <timeoutMs> [lastEventId]", 3, 4);
const count = integer(rawCount, "count");
const timeoutMs = integer(rawTimeout, "timeoutMs");

let received = 0;
deadline(timeoutMs, () => `received ${received} of ${count} events from ${url}`);

let firstRequest = true;

/** fetch, with Last-Event-ID on the first request when one was given. */
function fetchWithResume(input, init) {
  const headers = { ...init?.headers };
  if (firstRequest && lastEventId !== undefined && !("Last-Event-ID" in headers)) {
    headers["Last-Event-ID"] = lastEventId;
  }
  firstRequest = false;
  return fetch(input, { ...init, headers });
}

const source = new EventSource(url, { fetch: fetchWithResume });

source.addEventListener("open", () => {
  emit({ ready: true });
  if (count === 0) {
    source.close();
    exit(0);
  }
});

for (const name of EVENT_NAMES) {
  source.addEventListener(name, (event) => {
    emit({ id: event.lastEventId, event: event.type, data: event.data });
    received += 1;
    if (received === count) {
      source.close();
      exit(0);
    }
  });
}

source.addEventListener("error", (event) => {
  const why = event.message ?? "connection error"; // a refusal's message names its HTTP status
  if (source.readyState === EventSource.CLOSED) {
    fail(`EventSource gave up: ${why}, after ${received} of ${count} events`);
  } else {
    emit({ reconnecting: true, message: why });
  }
});
