// The consumers of `bench/bridge_scale.py` in Node.js: one child process, many consumers of a bridge,
// speaking the protocol of `bench/bridge_consumers.py` and measuring the same things, for less CPU a
// delivery (so that the bridge's core, not the load generator's, fills first).
//
//   node bench/bridge_consumers.mjs --http-port P --grpc-port G --ws N --sse N --grpc N
//        [--connect-timeout S] [--child-deadline S]
//
// Commands on stdin, one a line: `snap`, `record [EVERY]` (the latency of one delivery in EVERY),
// `unrecord`, `stall`, `quit`; answers are JSON lines prefixed `BRIDGE-BENCH ` on stdout, with the
// fields of the Python child's.
//
// - WebSocket: the `ws` package (no compression, no UTF-8 validation), `GET /ws?filter=%23`;
// - SSE: a raw streaming HTTP/1.1 reader with its own chunked decoder, `GET /events?filter=%23`;
// - gRPC: `@grpc/grpc-js`, one channel (and TCP connection) per consumer, `Subscribe(filters=["#"])`
//   read as raw bytes; each event of an `events` batch is a delivery, found by walking the varints.
//
// No consumer that stalls: Node cannot set a TCP socket's SO_RCVBUF or TCP_MAXSEG, which a stalling
// consumer needs (see `open_socket` in the Python child), so the bench keeps those in a Python child
// and this one takes no --stall-* option (`stall` answers `stalled` and stalls nothing).
//
// A delivery is counted when a consumer has read the event. Latency is the payload's `ts` (the
// publisher's wall clock, in µs) to the read, split at the envelope's `received_at` (the bridge's
// intake); the read time is `performance.timeOrigin + performance.now()`, the wall clock in µs.
// No explicit collection between windows, unlike the Python child: V8 cannot turn its collector off,
// and a full `gc()` stops this process for longer than a window's p99 at low load, which the
// deliveries read just after it carried as latency; V8's own major collections mark concurrently.
// The packages resolve from tests/node (`npm ci --prefix tests/node`).

import net from "node:net";
import { createRequire } from "node:module";
import { performance } from "node:perf_hooks";
import process from "node:process";
import readline from "node:readline";
import { parseArgs } from "node:util";

const require = createRequire(new URL("../tests/node/package.json", import.meta.url));
const WebSocket = require("ws");
const grpc = require("@grpc/grpc-js");

const HOST = "127.0.0.1";
const LINE_PREFIX = "BRIDGE-BENCH ";
const TRANSPORTS = ["websocket", "sse", "grpc"]; // the bridge's own transport labels
const GRPC_METHOD = "/mqtt_fleet.bridge.v1.FleetBridgeService/Subscribe";
const SUBSCRIBE_ALL = Buffer.from([0x0a, 0x01, 0x23]); // SubscribeRequest(filters=["#"])
const CONNECT_AT_ONCE = 20;

function emit(event, data = {}) {
  process.stdout.write(`${LINE_PREFIX}${JSON.stringify({ event, ...data })}\n`);
}

/** Microseconds of the wall clock (the publisher stamps `ts` with Python's time.time_ns() // 1000). */
function nowUs() {
  return Math.floor((performance.timeOrigin + performance.now()) * 1000);
}

function byTransport(make) {
  return Object.fromEntries(TRANSPORTS.map((t) => [t, make()]));
}

/** n, p50, p99, p99.9 and max of latencies in microseconds, as milliseconds (as the Python child). */
function percentiles(values) {
  if (!values.length) {
    return { n: 0 };
  }
  const v = Float64Array.from(values).sort();
  const n = v.length;
  const pick = (q) => v[Math.min(n - 1, Math.floor(q * (n - 1) + 0.5))] / 1000;
  return { n, p50: pick(0.5), p99: pick(0.99), p999: pick(0.999), max: v[n - 1] / 1000 };
}

// ---------------------------------------------------------------------------------------------
// Parsing: the numbers a latency sample needs, read in place from the bytes.
// ---------------------------------------------------------------------------------------------

const TS_JSON = Buffer.from('"ts":');
const RECEIVED_AT = Buffer.from('"received_at":');
const EVENT_JSON = Buffer.from('{"id":');
const SSE_ID = Buffer.from("id: ");
const SSE_NEXT_ID = Buffer.from("\n\nid: ");
const SSE_END = Buffer.from("\n\n");
const SSE_DROPPED = Buffer.from("event: dropped");
const SSE_RESET = Buffer.from("event: reset");
const CRLF = Buffer.from("\r\n");
const HEAD_END = Buffer.from("\r\n\r\n");

/** The payload's ts (µs), the first `"ts":` at or after `from`: in a JSON envelope, or in a
 * serialized gRPC Event, whose `json_text` holds the payload's JSON as the envelope has it. */
function tsOf(data, from) {
  let i = data.indexOf(TS_JSON, from) + TS_JSON.length;
  let value = 0;
  for (let c = data[i]; c >= 0x30 && c <= 0x39; c = data[++i]) {
    value = value * 10 + (c - 0x30);
  }
  return value;
}

/** The envelope's received_at (the bridge's clock when it took the message), in µs. */
function receivedAtOf(data, from) {
  const i = data.indexOf(RECEIVED_AT, from) + RECEIVED_AT.length;
  return Math.round(Number(data.toString("latin1", i, data.indexOf(0x2c, i))) * 1e6);
}

function startsWith(data, prefix, at) {
  const end = at + prefix.length;
  return data.length >= end && data.compare(prefix, 0, prefix.length, at, end) === 0;
}

function count(data, pattern) {
  let n = 0;
  for (let i = data.indexOf(pattern); i >= 0; i = data.indexOf(pattern, i + 1)) {
    n += 1;
  }
  return n;
}

let varintEnd = 0; // where the last varint read by varintAt ended

function varintAt(data, pos) {
  let value = 0;
  let scale = 1;
  for (let k = 0; k < 10; k++) {
    const b = data[pos++];
    value += (b & 0x7f) * scale;
    if (!(b & 0x80)) {
      break;
    }
    scale *= 128;
  }
  varintEnd = pos;
  return value;
}

const EVENTS_TAG = 0x22; // SubscribeResponse.events (field 4, length-delimited)

/** The events of a SubscribeResponse: calls `each(start, end)` for every serialized Event if given,
 * and returns how many there were; -1 for a Dropped or Reset item.
 * A batch is `0x22 <length>` then one `0x0a <length> <Event>` per event (EventBatch.events). */
function grpcEvents(data, each) {
  if (data[0] !== EVENTS_TAG) {
    return -1;
  }
  varintAt(data, 1);
  let pos = varintEnd;
  let n = 0;
  while (pos < data.length) {
    const length = varintAt(data, pos + 1);
    pos = varintEnd;
    if (each !== null) {
      each(pos, pos + length);
    }
    pos += length;
    n += 1;
  }
  return n;
}

/** Event.received_at (field 7, a double) of the serialized Event at [start, end), in µs. */
function receivedAtOfGrpc(data, start, end) {
  let pos = start;
  while (pos < end) {
    const key = varintAt(data, pos);
    pos = varintEnd;
    const wire = key & 7;
    if (wire === 0) {
      varintAt(data, pos);
      pos = varintEnd;
    } else if (wire === 1) {
      if (key >>> 3 === 7) {
        return Math.round(data.readDoubleLE(pos) * 1e6);
      }
      pos += 8;
    } else if (wire === 2) {
      const length = varintAt(data, pos);
      pos = varintEnd + length;
    } else if (wire === 5) {
      pos += 4;
    } else {
      break;
    }
  }
  throw new Error("no received_at in the gRPC event");
}

// ---------------------------------------------------------------------------------------------
// The state shared by all the consumers of this process.
// ---------------------------------------------------------------------------------------------

class Owner {
  constructor() {
    this.conns = []; // {transport, count, closed}
    this.recording = false;
    this.every = 1; // record the latency of one delivery in `every`
    this.tick = 0;
    this.notes = byTransport(() => 0); // dropped/reset notices
    this.errors = [];
    this.resetLatency(1);
    this.recording = false;
  }

  error(text) {
    if (this.errors.length < 50) {
      this.errors.push(text);
    }
  }

  /** Whether to record the latency of this delivery: one in `every`, across transports. */
  take() {
    this.tick += 1;
    return this.tick % this.every === 0;
  }

  record(transport, now, ts, receivedAt) {
    this.lat[transport].push(now - ts); // publish -> read
    this.latOut[transport].push(now - receivedAt); // bridge intake -> read
    this.latIn[transport].push(receivedAt - ts); // publish -> bridge intake
    this.when[transport].push(now - this.startedUs); // read time of each sample, since the start
  }

  resetLatency(every) {
    this.lat = byTransport(() => []);
    this.latOut = byTransport(() => []);
    this.latIn = byTransport(() => []);
    this.when = byTransport(() => []);
    this.startedUs = nowUs();
    this.every = Math.max(1, every);
    this.recording = true;
  }

  /** Per transport, per second since recording started: [second, samples, p99 ms, max ms]. */
  timeline() {
    const out = {};
    for (const t of TRANSPORTS) {
      const buckets = new Map();
      const when = this.when[t];
      const lat = this.lat[t];
      for (let i = 0; i < when.length; i++) {
        const sec = Math.floor(when[i] / 1e6);
        if (!buckets.has(sec)) {
          buckets.set(sec, []);
        }
        buckets.get(sec).push(lat[i]);
      }
      const rows = [...buckets.keys()]
        .sort((a, b) => a - b)
        .map((sec) => {
          const p = percentiles(buckets.get(sec));
          return [sec, p.n, p.p99, p.max];
        });
      if (rows.length) {
        out[t] = rows;
      }
    }
    return out;
  }

  snapshot() {
    const cpu = process.cpuUsage();
    const counts = byTransport(() => 0);
    const closed = byTransport(() => 0);
    const per = byTransport(() => []);
    const reasons = new Set();
    for (const c of this.conns) {
      counts[c.transport] += c.count;
      per[c.transport].push(c.count);
      if (c.closed !== null) {
        closed[c.transport] += 1;
        reasons.add(`${c.transport}: ${c.closed}`);
      }
    }
    const stats = (of) =>
      this.recording ? Object.fromEntries(TRANSPORTS.map((t) => [t, percentiles(of[t])])) : {};
    return {
      cpu: (cpu.user + cpu.system) / 1e6,
      counts,
      stalled_counts: byTransport(() => 0),
      closed,
      stalled_closed: byTransport(() => 0),
      closed_reasons: [...reasons].sort().slice(0, 5),
      per,
      notes: this.notes,
      errors: this.errors.slice(-5),
      lat: stats(this.lat),
      lat_out: stats(this.latOut),
      lat_in: stats(this.latIn),
      timeline: this.recording ? this.timeline() : {},
    };
  }
}

// ---------------------------------------------------------------------------------------------
// The consumers. Each returns {ready: Promise, close()}; `ready` settles once the bridge has the
// subscription (WebSocket open, SSE response head, gRPC response headers).
// ---------------------------------------------------------------------------------------------

function wsConsumer(owner, conn, port) {
  const ws = new WebSocket(`ws://${HOST}:${port}/ws?filter=%23`, {
    perMessageDeflate: false, // as the Python child's ClientProtocol, which offers no extension
    skipUTF8Validation: true,
    maxPayload: 1 << 20,
  });
  const ready = new Promise((resolve, reject) => {
    ws.on("open", resolve);
    ws.on("error", (err) => {
      conn.closed ??= `connection lost (${err.message})`;
      reject(new Error(`handshake failed: ${err.message}`));
    });
  });
  ws.on("message", (data, isBinary) => {
    if (isBinary) {
      return;
    }
    if (!startsWith(data, EVENT_JSON, 0)) {
      owner.notes.websocket += 1;
      return;
    }
    conn.count += 1;
    if (owner.recording && owner.take()) {
      owner.record("websocket", nowUs(), tsOf(data, 0), receivedAtOf(data, 0));
    }
  });
  ws.on("close", (code) => {
    conn.closed ??= code === 1006 ? "connection lost (no close frame)" : `closed (code ${code})`;
  });
  return { ready, close: () => ws.terminate() };
}

function sseConsumer(owner, conn, port) {
  const socket = net.connect({ host: HOST, port, noDelay: true });
  let head = Buffer.alloc(0); // null once the response head is parsed
  let raw = Buffer.alloc(0); // chunked transfer coding, not yet decoded
  let body = Buffer.alloc(0); // decoded, starting at an event boundary
  let chunkLeft = 0; // bytes of the current chunk still to come (+2 for its CRLF)
  let settle;
  const ready = new Promise((resolve, reject) => {
    settle = (err) => (err ? reject(err) : resolve());
  });
  const fail = (reason) => {
    conn.closed ??= reason;
    settle(new Error(reason));
    socket.destroy();
  };

  function dechunk() {
    const pieces = [body];
    let pos = 0;
    const end = raw.length;
    while (pos < end) {
      if (chunkLeft) {
        const take = Math.min(chunkLeft, end - pos);
        const dataLeft = chunkLeft - 2; // the chunk's data, then its CRLF
        if (dataLeft > 0) {
          pieces.push(raw.subarray(pos, pos + Math.min(take, dataLeft)));
        }
        chunkLeft -= take;
        pos += take;
        continue;
      }
      const nl = raw.indexOf(CRLF, pos);
      if (nl < 0) {
        break;
      }
      const size = Number.parseInt(raw.toString("latin1", pos, nl).split(";")[0], 16);
      pos = nl + 2;
      if (size === 0) {
        conn.closed ??= "the stream ended";
        break;
      }
      chunkLeft = size + 2;
    }
    raw = raw.subarray(pos);
    body = pieces.length > 1 ? Buffer.concat(pieces) : body;
  }

  function events() {
    const last = body.lastIndexOf(SSE_END);
    if (last < 0) {
      return;
    }
    const end = last + 2;
    const done = body.subarray(0, end);
    body = body.subarray(end);
    const n = count(done, SSE_NEXT_ID) + (startsWith(done, SSE_ID, 0) ? 1 : 0);
    conn.count += n;
    const notices = count(done, SSE_DROPPED) + count(done, SSE_RESET);
    if (notices) {
      owner.notes.sse += notices;
    }
    if (owner.recording && n) {
      const now = nowUs();
      for (let start = 0; start < end; ) {
        const stop = done.indexOf(SSE_END, start) + 2;
        if (startsWith(done, SSE_ID, start) && owner.take()) {
          owner.record("sse", now, tsOf(done, start), receivedAtOf(done, start));
        }
        start = stop;
      }
    }
  }

  socket.on("connect", () => {
    socket.write(
      `GET /events?filter=%23 HTTP/1.1\r\nHost: ${HOST}:${port}\r\nAccept: text/event-stream\r\n` +
        "Cache-Control: no-cache\r\n\r\n",
    );
  });
  socket.on("data", (data) => {
    if (head !== null) {
      head = Buffer.concat([head, data]);
      const end = head.indexOf(HEAD_END);
      if (end < 0) {
        if (head.length > 65536) {
          fail("response head too long");
        }
        return;
      }
      const text = head.toString("latin1", 0, end).toLowerCase();
      data = head.subarray(end + 4);
      head = null;
      if (text.split(" ", 3)[1] !== "200" || !text.includes("transfer-encoding: chunked")) {
        fail(`unexpected response: ${JSON.stringify(text.slice(0, 200))}`);
        return;
      }
      settle(null);
    }
    raw = raw.length ? Buffer.concat([raw, data]) : data;
    dechunk();
    events();
  });
  socket.on("error", (err) => fail(`connection lost (${err.message})`));
  socket.on("close", () => fail("connection lost (closed)"));
  return { ready, close: () => socket.destroy() };
}

function grpcConsumer(owner, conn, port) {
  // A channel of its own: grpc-js shares subchannels (and TCP connections) between channels unless
  // told not to, as grpc.aio does in the Python child.
  const client = new grpc.Client(`${HOST}:${port}`, grpc.credentials.createInsecure(), {
    "grpc.use_local_subchannel_pool": 1,
  });
  const call = client.makeServerStreamRequest(
    GRPC_METHOD,
    () => SUBSCRIBE_ALL,
    (data) => data, // raw bytes: no response deserializer
    null,
    new grpc.Metadata(),
    {},
  );
  const ready = new Promise((resolve, reject) => {
    call.on("metadata", resolve); // sent once the bridge has registered the subscription
    call.on("error", (err) => {
      conn.closed ??= `${grpc.status[err.code]}: ${err.details}`;
      reject(new Error(conn.closed));
    });
  });
  let now = 0;
  let batch = null; // the message being read, while recording
  const sample = (start, end) => {
    if (owner.take()) {
      owner.record("grpc", now, tsOf(batch, start), receivedAtOfGrpc(batch, start, end));
    }
  };
  call.on("data", (data) => {
    const recording = owner.recording;
    if (recording) {
      now = nowUs();
      batch = data;
    }
    const n = grpcEvents(data, recording ? sample : null);
    if (n < 0) {
      owner.notes.grpc += 1; // Dropped or Reset
    } else {
      conn.count += n;
    }
  });
  call.on("status", (status) => {
    conn.closed ??= `stream ended (${grpc.status[status.code]})`;
  });
  return {
    ready,
    close: () => {
      call.cancel();
      client.close();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Main: connect, answer commands, quit.
// ---------------------------------------------------------------------------------------------

function options() {
  const { values } = parseArgs({
    options: {
      "http-port": { type: "string" },
      "grpc-port": { type: "string" },
      ws: { type: "string", default: "0" },
      sse: { type: "string", default: "0" },
      grpc: { type: "string", default: "0" },
      "connect-timeout": { type: "string", default: "30" },
      "child-deadline": { type: "string", default: "900" },
    },
  });
  const out = {};
  for (const [key, text] of Object.entries(values)) {
    const value = Number(text);
    if (!Number.isFinite(value) || value < 0) {
      throw new Error(`--${key}: not a number >= 0: ${text}`);
    }
    out[key] = value;
  }
  if (!out["http-port"] || !out["grpc-port"]) {
    throw new Error("--http-port and --grpc-port are required");
  }
  return out;
}

async function main() {
  const args = options();
  const owner = new Owner();
  const consumers = [];
  const layout = [
    ["websocket", args.ws, wsConsumer, args["http-port"]],
    ["sse", args.sse, sseConsumer, args["http-port"]],
    ["grpc", args.grpc, grpcConsumer, args["grpc-port"]],
  ];
  const jobs = [];
  for (const [transport, n, make, port] of layout) {
    for (let i = 0; i < n; i++) {
      const conn = { transport, count: 0, closed: null };
      owner.conns.push(conn);
      jobs.push(() => {
        const consumer = make(owner, conn, port);
        consumers.push(consumer);
        return consumer.ready;
      });
    }
  }
  const quit = (code) => {
    for (const consumer of consumers) {
      consumer.close();
    }
    process.exit(code);
  };

  const t0 = performance.now();
  let timer;
  try {
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error("timed out")), args["connect-timeout"] * 1000);
    });
    let next = 0;
    const worker = async () => {
      while (next < jobs.length) {
        await jobs[next++]();
      }
    };
    const workers = Array.from({ length: Math.min(CONNECT_AT_ONCE, jobs.length) }, worker);
    await Promise.race([Promise.all(workers), timeout]);
  } catch (err) {
    emit("failed", { error: `connecting the consumers: ${err.message}`, errors: owner.errors });
    quit(1);
    return;
  } finally {
    clearTimeout(timer);
  }
  emit("ready", { connect_s: (performance.now() - t0) / 1000, consumers: owner.conns.length });
  setTimeout(() => quit(0), args["child-deadline"] * 1000);
  const lines = readline.createInterface({ input: process.stdin });
  lines.on("close", () => quit(0));
  lines.on("line", (line) => {
    const command = line.trim();
    if (command === "" || command === "quit") {
      quit(0);
    } else if (command === "snap") {
      emit("snap", owner.snapshot());
    } else if (command.startsWith("record")) {
      owner.resetLatency(Number.parseInt(command.slice("record".length).trim() || "1", 10));
      emit("recording");
    } else if (command === "unrecord") {
      owner.recording = false;
      emit("unrecorded");
    } else if (command === "stall") {
      emit("stalled"); // no consumer of this process stalls (see the head of this file)
    } else {
      emit("unknown", { command });
    }
  });
}

main().catch((err) => {
  emit("failed", { error: String(err && err.stack ? err.stack : err) });
  process.exit(1);
});
