// An MQTT 5 client of the broker on MQTT.js (`mqtt`), over mqtt:// or ws://.
//
//   node mqtt_client.mjs <url> <filter> <count> <timeoutMs>
//
// It connects with protocolVersion 5 (Topic Alias Maximum 5, so the broker may send aliases, and
// automatic aliases for what it publishes), subscribes to <filter> at QoS 1 with Subscription
// Identifier 7, then prints {"ready":true,"connack":{...}} with the CONNACK properties. Each line on
// stdin, {"topic","payload","qos","properties"}, is published twice (the second time MQTT.js sends
// only the alias) and answered with {"published":topic}. Every message received is printed as
// {"topic","payload","qos","retain","properties"}; it exits 0 after <count> messages, 1 on a
// timeout, an error or a close before that.

import mqtt from "mqtt";

import { args, deadline, emit, exit, fail, integer, onStdinLine } from "./cli.mjs";

const [url, filter, rawCount, rawTimeout] = args("<url> <filter> <count> <timeoutMs>", 4, 4);
const count = integer(rawCount, "count");
const timeoutMs = integer(rawTimeout, "timeoutMs");

let received = 0;
deadline(timeoutMs, () => `received ${received} of ${count} messages from ${url}`);

const client = mqtt.connect(url, {
  protocolVersion: 5,
  clean: true,
  reconnectPeriod: 0,
  connectTimeout: timeoutMs,
  properties: { topicAliasMaximum: 5, sessionExpiryInterval: 0 },
  autoAssignTopicAlias: true,
});

client.on("error", (error) => fail(`error: ${error.message}`));
client.on("close", () => fail(`the connection closed after ${received} of ${count} messages`));

client.on("connect", (connack) => {
  client.subscribe(filter, { qos: 1, properties: { subscriptionIdentifier: 7 } }, (error, granted) => {
    if (error) {
      fail(`subscribe: ${error.message}`);
      return;
    }
    emit({ ready: true, connack: connack.properties ?? {}, granted: granted.map((g) => g.qos) });
    onStdinLine((line) => {
      const { topic, payload, qos, properties } = JSON.parse(line);
      client.publish(topic, payload, { qos, properties }, (first) => {
        if (first) {
          fail(`publish: ${first.message}`);
          return;
        }
        client.publish(topic, payload, { qos, properties }, (second) => {
          if (second) {
            fail(`publish: ${second.message}`);
            return;
          }
          emit({ published: topic });
        });
      });
    });
  });
});

client.on("message", (topic, payload, packet) => {
  received += 1;
  const properties = { ...(packet.properties ?? {}) };
  if (properties.correlationData) {
    properties.correlationData = properties.correlationData.toString("hex");
  }
  emit({ topic, payload: payload.toString("utf8"), qos: packet.qos, retain: packet.retain, properties });
  if (received === count) {
    client.removeAllListeners("close");
    client.end(false, {}, () => exit(0));
  }
});
