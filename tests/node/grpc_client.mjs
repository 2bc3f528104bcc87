// A gRPC client of FleetBridgeService, on `@grpc/grpc-js` with the .proto loaded by `@grpc/proto-loader`.
//
//   node grpc_client.mjs <target> <protoPath> subscribe <filtersJSON> <count> <timeoutMs> [resumeAfterId]
//   node grpc_client.mjs <target> <protoPath> publish <topic> <payload> <qos> [timeoutMs]
//
// subscribe prints {"ready":true} when the response headers arrive (the bridge sends them once the
// subscription is registered), then each item as JSON: each event of an `events` batch on its own line
// as {"event": ...}, and a `dropped` or `reset` response as it is. It exits 0 after <count> items.
// publish sends <payload> (UTF-8) and prints the PublishResponse. Messages are decoded with keepCase,
// longs and enums as strings, bytes as base64 and the name of each set oneof (oneofs: true); fields
// at their default value are left out. A failed call exits 1 with the status code's name on stderr:
// "grpc_client.mjs: INVALID_ARGUMENT (3): ...".
//
// A JSON payload comes as `json_text`, the envelope's JSON text: each event is printed with it parsed
// into `payload`, as a consumer would read it (JSON.parse), and `json_text` kept as received.
//
// Imports resolve from the nearest folder above <protoPath> that holds a buf.yaml (the Buf module
// root).

import fs from "node:fs";
import path from "node:path";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

import { args, deadline, emit, exit, fail, integer } from "./cli.mjs";

const USAGE = [
  "<target> <protoPath> subscribe <filtersJSON> <count> <timeoutMs> [resumeAfterId]",
  "   or: node grpc_client.mjs <target> <protoPath> publish <topic> <payload> <qos> [timeoutMs]",
].join("\n");
const [target, protoPath, mode, ...rest] = args(USAGE, 6, 7);

function moduleRoot(file) {
  for (let dir = path.dirname(file); ; dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, "buf.yaml"))) {
      return dir;
    }
    if (path.dirname(dir) === dir) {
      return path.dirname(file);
    }
  }
}

const protoFile = path.resolve(protoPath);
const definition = protoLoader.loadSync(protoFile, {
  keepCase: true,
  longs: String,
  enums: String,
  bytes: String,
  oneofs: true,
  includeDirs: [moduleRoot(protoFile)],
});
const FleetBridgeService = grpc.loadPackageDefinition(definition).mqtt_fleet.bridge.v1.FleetBridgeService;
const client = new FleetBridgeService(target, grpc.credentials.createInsecure());

/** Exit 1 naming the status code of a failed call. */
function failCall(error, progress) {
  const name = grpc.status[error.code] ?? "UNKNOWN_STATUS";
  fail(`${name} (${error.code}): ${error.details || error.message}${progress ? `; ${progress}` : ""}`);
}

/** The event with its JSON payload parsed into `payload` (the `payload` oneof's name moves to `member`). */
function withPayload(event) {
  const { payload: member, ...fields } = event;
  return member === "json_text" ? { ...fields, member, payload: JSON.parse(event.json_text) } : { ...fields, member };
}

if (mode === "subscribe") {
  const [filtersJSON, rawCount, rawTimeout, resumeAfterId] = rest;
  const filters = JSON.parse(filtersJSON);
  const count = integer(rawCount, "count");
  const timeoutMs = integer(rawTimeout, "timeoutMs");
  const request = { filters };
  if (resumeAfterId !== undefined) {
    request.resume_after_id = resumeAfterId;
  }
  let received = 0;
  const progress = () => `received ${received} of ${count} items`;
  deadline(timeoutMs, progress);
  const call = client.Subscribe(request);
  call.on("metadata", () => {
    emit({ ready: true });
    if (count === 0) {
      call.cancel();
      exit(0);
    }
  });
  call.on("data", (response) => {
    const batch = response.item === "events";
    const items = batch ? response.events.events.map((event) => ({ event: withPayload(event) })) : [response];
    for (const item of items) {
      emit(item);
      received += 1;
      if (received === count) {
        call.cancel();
        exit(0);
      }
    }
  });
  call.on("error", (error) => failCall(error, progress()));
  call.on("end", () => fail(`the stream ended: ${progress()}`));
} else if (mode === "publish") {
  const [topic, payload, rawQos, rawTimeout = "5000"] = rest;
  const qos = integer(rawQos, "qos");
  const timeoutMs = integer(rawTimeout, "timeoutMs");
  deadline(timeoutMs + 1000, () => "no answer to Publish");
  const request = { topic, payload: Buffer.from(payload, "utf8"), qos };
  client.Publish(request, { deadline: Date.now() + timeoutMs }, (error, response) => {
    if (error) {
      failCall(error);
    } else {
      emit(response);
      exit(0);
    }
  });
} else {
  args(USAGE, Infinity, Infinity);
}
