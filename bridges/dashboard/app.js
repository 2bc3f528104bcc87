// The mqtt-fleet dashboard: the bridge's own /events (EventSource) or /ws (WebSocket) stream.
//
// Messages only update plain state (one Map entry per device, counters, a bounded log backlog).
// The DOM is redrawn at most RENDER_EVERY_MS, on animation frames, and only what changed, so a
// fleet of 10,000 devices sending thousands of messages per second does not stall the page.
"use strict";

(() => {
  // cmd/response/+: a v5 device's answer to a command that a bridge on MQTT 5 sent as a request.
  const FILTERS = ["fleet/+/telemetry", "fleet/+/status", "fleet/+/cmd/ack", "fleet/+/cmd/response/+"];
  const RESPONSE_TOPIC = /^fleet\/[^/]+\/cmd\/response\/[^/]+$/;
  const RENDER_EVERY_MS = 200;
  const REORDER_EVERY_MS = 1000; // new devices join the sorted grid at most this often
  const HISTORY = 60; // samples per chart
  const CARDS = 8; // devices charted at once
  const LOG_ROWS = 200;
  const COMPACT_OVER = 400; // devices: past this the grid drops the labels
  const RECONNECT_MAX_MS = 10000;
  const COMMAND_TIMEOUT_MS = 10000; // for the bridge's answer to a publish
  const ACK_TIMEOUT_MS = 10000; // for the device's ack, once the command is published
  const COMMAND_ROWS = 50;
  // An SSE page starts with the bridge's replay ring (10,000 events by default): recent statuses,
  // wills and values. Its queue at the bridge holds that much, so the replay is not cut short.
  const SSE_QUEUE = 10000;

  const $ = (id) => document.getElementById(id);
  const el = (tag, className, text) => {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  };

  // State, written by message handlers and read by the renderer.

  const devices = new Map(); // id -> device record
  const changed = new Set(); // device ids whose cell or card needs redrawing
  // streamReconnects: this page's own streams. deviceReconnects: devices back online, from their
  // statuses (see onStatus).
  const stats = { events: 0, dropped: 0, gaps: 0, streamReconnects: 0, deviceReconnects: 0, lastId: null };
  let logBacklog = []; // log entries not rendered yet, oldest first
  let gridOrderStale = false;
  let pinned = []; // device ids with a chart card, in order
  let cardsStale = false;
  let connection = { state: "connecting", text: "connecting…" };
  let connectionChanged = true;

  function device(id) {
    let record = devices.get(id);
    if (record === undefined) {
      record = {
        id, state: "unknown", reason: "", status: null, seq: null, values: new Map(), cell: null, card: null,
      };
      devices.set(id, record);
      gridOrderStale = true;
      if (pinned.length < CARDS) {
        pinned.push(id);
        cardsStale = true;
      }
    }
    changed.add(id);
    return record;
  }

  // `at`: when it happened; for an event that is when the bridge received it (its received_at), which
  // for replayed history is long before the page did.
  function log(kind, text, at = new Date()) {
    logBacklog.push({ at, kind, text });
    if (logBacklog.length > LOG_ROWS) logBacklog = logBacklog.slice(-LOG_ROWS);
  }

  function setConnection(state, text) {
    connection = { state, text };
    connectionChanged = true;
  }

  // Events: one envelope (see docs/bridge.md) at a time.

  function onEnvelope(envelope) {
    stats.events += 1;
    stats.lastId = envelope.id;
    if (awaitingResume !== null) settleResume("resumed", `resumed after event ${awaitingResume}, nothing missed`);
    const payload = envelope.payload;
    const at = typeof envelope.received_at === "number" ? new Date(envelope.received_at * 1000) : new Date();
    switch (envelope.kind) {
      case "telemetry":
        onTelemetry(envelope.device, payload);
        if (logTelemetry.checked) log("telemetry", `${envelope.device} ${JSON.stringify(payload)}`, at);
        break;
      case "status":
        onStatus(envelope.device, payload, envelope.retain === true, at);
        break;
      case "ack":
        onAck(envelope.device, payload, at);
        break;
      case "bridge":
        if (envelope.topic === "$bridge/oversized") {
          log("bridge", `not bridged: ${payload.topic}, ${payload.size} bytes (max_event_bytes ${payload.max_event_bytes})`, at);
        } else {
          log(
            "bridge", `broker ${payload && payload.connected ? "connected" : "lost"}: ${payload && payload.reason}`, at,
          );
        }
        break;
      default:
        if (RESPONSE_TOPIC.test(envelope.topic)) onAck(envelope.device, payload, at);
        else log("raw", envelope.topic, at);
    }
  }

  function onTelemetry(id, payload) {
    if (!id || !payload || typeof payload !== "object") return;
    const record = device(id);
    if (record.state === "unknown") record.state = "online";
    if (Number.isInteger(payload.seq)) {
      // seq is per device and survives reconnects: a jump forward is a loss somewhere upstream.
      if (record.seq !== null && payload.seq > record.seq + 1) stats.gaps += payload.seq - record.seq - 1;
      record.seq = payload.seq;
    }
    const values = payload.values;
    if (!values || typeof values !== "object") return;
    for (const [name, value] of Object.entries(values)) {
      let series = record.values.get(name);
      if (series === undefined) {
        series = { latest: null, samples: [] };
        record.values.set(name, series);
      }
      series.latest = value;
      const sample = typeof value === "boolean" ? Number(value) : value;
      if (typeof sample === "number") {
        series.samples.push(sample);
        if (series.samples.length > HISTORY) series.samples.shift();
      }
    }
  }

  // A device reconnects when it announces itself online (its birth) after an earlier status of its
  // own: a will, an offline status, or a birth whose connection has since been replaced. A retained
  // status (the bridge's copy, for a page that just connected) tells the state, not news: it sets
  // the cell and is neither logged nor counted.
  function onStatus(id, payload, retained, at) {
    if (!id || !payload || typeof payload !== "object") return;
    const record = device(id);
    const previous = record.status;
    if (payload.online === true) {
      record.state = "online";
      record.reason = "";
      record.status = "online";
      if (retained) return;
      if (previous !== null) stats.deviceReconnects += 1;
      log("status", previous === null ? `${id} online` : `${id} back online (was ${previous})`, at);
    } else if (payload.online === false) {
      const reason = typeof payload.reason === "string" ? payload.reason : "";
      record.state = reason === "lost" || reason === "clean" ? reason : "offline";
      record.reason = reason;
      record.status = reason === "lost" ? "offline, will" : "offline";
      if (retained) return;
      const why = reason === "lost" ? "last will: lost" : reason || "no reason given";
      log(reason === "lost" ? "will" : "status", `${id} offline (${why})`, at);
    }
  }

  // Commands go out over a short WebSocket (the bridge's publish message); acks come back as events.

  const commands = new Map(); // command id -> table row
  let commandCount = 0;

  function onAck(id, payload, at) {
    const commandId = payload && typeof payload === "object" ? String(payload.id) : "";
    const ok = Boolean(payload && payload.ok);
    const text = ok ? "ack: ok" : `ack: failed${payload && payload.error ? `: ${payload.error}` : ""}`;
    const row = commands.get(commandId);
    if (row !== undefined) {
      clearTimeout(Number(row.dataset.ackTimer));
      commandState(row, ok ? "ack" : "failed", text); // also after "no ack": a late ack still counts
    }
    log("ack", `${id} ${commandId} ${text}`, at);
  }

  // A command's row: sending -> waiting (published, waiting for the ack) -> ack, failed or no-ack.
  function commandState(row, state, text) {
    row.dataset.state = state;
    row.lastChild.textContent = text;
  }

  function sendCommand(deviceId, op, value) {
    commandCount += 1;
    const command = { id: `web-${Date.now().toString(36)}-${commandCount}`, op };
    if (value !== "") command.value = Number(value);
    const row = el("tr");
    row.dataset.command = command.id;
    for (const text of [command.id, deviceId, value === "" ? op : `${op} ${value}`, ""]) {
      row.append(el("td", "", text));
    }
    commandState(row, "sending", "sending");
    const table = $("command-table").tBodies[0];
    table.prepend(row);
    commands.set(command.id, row);
    while (table.rows.length > COMMAND_ROWS) {
      const oldest = table.lastElementChild;
      commands.delete(oldest.dataset.command);
      oldest.remove();
    }

    const socket = new WebSocket(endpoint("ws", false));
    const timer = setTimeout(() => {
      commandState(row, "failed", "no answer from the bridge");
      socket.close();
    }, COMMAND_TIMEOUT_MS);
    socket.onopen = () => {
      const topic = `fleet/${deviceId}/cmd`;
      socket.send(JSON.stringify({ type: "publish", topic, payload: command, qos: 1 }));
    };
    socket.onmessage = (message) => {
      const reply = JSON.parse(message.data);
      clearTimeout(timer);
      if (reply.type === "published") {
        // The ack may have come first, over the page's stream.
        if (row.dataset.state === "sending") {
          commandState(row, "waiting", "published, waiting for the ack");
          row.dataset.ackTimer = setTimeout(() => {
            if (row.dataset.state === "waiting") {
              commandState(row, "no-ack", `no ack within ${ACK_TIMEOUT_MS / 1000} s: is the device online?`);
            }
          }, ACK_TIMEOUT_MS);
        }
      } else {
        commandState(row, "failed", `refused: ${reply.error}`);
      }
      socket.close();
    };
    socket.onerror = () => {
      clearTimeout(timer);
      commandState(row, "failed", "could not reach the bridge");
    };
  }

  // Transports. Both deliver the same envelope; only SSE can resume.

  const params = new URLSearchParams(location.search);
  let transport = params.get("transport") === "ws" ? "ws" : "sse";
  let current = null; // the open EventSource or WebSocket
  let retryTimer = null;
  let retryDelay = 500;
  let awaitingResume = null; // the event id an SSE reconnect resumes after, until it is settled
  let everConnected = false;

  function endpoint(path, withFilters) {
    const url = new URL(path, location.href);
    if (path === "ws") url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    if (withFilters) for (const filter of FILTERS) url.searchParams.append("filter", filter);
    return url;
  }

  function settleResume(state, text) {
    const after = awaitingResume;
    awaitingResume = null;
    setConnection(state, `SSE: ${text}`);
    log("connection", `after event ${after}: ${text}`);
  }

  function connected(name) {
    retryDelay = 500;
    if (everConnected) stats.streamReconnects += 1;
    everConnected = true;
    if (awaitingResume === null) setConnection("live", `${name}: live`);
    else setConnection("resuming", `SSE: reconnected, resuming after event ${awaitingResume}…`);
  }

  function retryLater(why) {
    // The browser gave up (EventSource after an HTTP error) or cannot resume (WebSocket): back off.
    setConnection("down", `${why}; retrying in ${(retryDelay / 1000).toFixed(1)} s`);
    retryTimer = setTimeout(open, retryDelay);
    retryDelay = Math.min(retryDelay * 2, RECONNECT_MAX_MS);
  }

  function openSse() {
    const url = endpoint("events", true);
    url.searchParams.set("queue", SSE_QUEUE);
    // A fresh EventSource sends no Last-Event-ID header: resume through the query instead. The
    // first stream starts after event 0, that is with everything the ring holds.
    url.searchParams.set("last_event_id", stats.lastId ?? 0);
    if (stats.lastId !== null) awaitingResume = stats.lastId;
    const source = new EventSource(url);
    current = source;
    source.onopen = () => connected("SSE");
    source.onerror = () => {
      if (current !== source) return;
      if (source.readyState === EventSource.CONNECTING) {
        // EventSource reconnects by itself and sends Last-Event-ID.
        awaitingResume = stats.lastId;
        setConnection("down", `SSE: connection lost, reconnecting from event ${stats.lastId ?? "none"}…`);
        log("connection", "SSE connection lost");
      } else {
        source.close();
        log("connection", "SSE refused by the bridge");
        loggedIn().then(
          (ok) => (ok ? retryLater("SSE: the bridge refused the stream") : askForToken("logged out: log in again")),
          () => retryLater("SSE: the bridge cannot be reached"),
        );
      }
    };
    const parse = (handler) => (message) => {
      if (current === source) handler(JSON.parse(message.data));
    };
    for (const kind of ["telemetry", "status", "ack", "raw", "bridge"]) {
      source.addEventListener(kind, parse(onEnvelope));
    }
    source.addEventListener("dropped", parse(onDropped));
    source.addEventListener("reset", parse((reset) => {
      const text = `reset: events after ${reset.after_id} and before ${reset.oldest_id} are gone`;
      if (awaitingResume !== null) settleResume("reset", text);
      else if (reset.after_id === 0) log("connection", `history from the bridge, from event ${reset.oldest_id}`);
      else log("connection", text);
    }));
  }

  function onDropped(dropped) {
    stats.dropped += dropped.count;
    const text = `the bridge dropped ${dropped.count} events for this page (too slow)`;
    if (awaitingResume !== null) settleResume("reset", `resumed, but ${text}`);
    else log("dropped", text);
  }

  function openWs() {
    const socket = new WebSocket(endpoint("ws", true));
    current = socket;
    socket.onopen = () => connected("WebSocket");
    socket.onmessage = (message) => {
      if (current !== socket) return;
      const item = JSON.parse(message.data);
      if (item.type === "dropped") onDropped(item);
      else if (item.type === "error") log("error", item.error);
      else if (item.type === undefined) onEnvelope(item);
    };
    socket.onclose = (close) => {
      if (current !== socket) return;
      log("connection", `WebSocket closed (${close.code}${close.reason ? `: ${close.reason}` : ""})`);
      retryLater("WebSocket: closed, events until it reconnects are missed");
    };
  }

  function open() {
    retryTimer = null;
    if (transport === "sse") openSse();
    else openWs();
  }

  function switchTransport(next) {
    if (next === transport) return;
    transport = next;
    const url = new URL(location.href);
    url.searchParams.set("transport", next);
    history.replaceState(null, "", url);
    const previous = current;
    current = null;
    if (previous !== null) previous.close();
    if (retryTimer !== null) clearTimeout(retryTimer);
    awaitingResume = null;
    everConnected = false;
    retryDelay = 500;
    log("connection", `switched to ${next === "sse" ? "SSE" : "WebSocket"}`);
    setConnection("connecting", "connecting…");
    open();
  }

  // Rendering, on animation frames, at most every RENDER_EVERY_MS.

  const grid = $("grid");
  const SPARK_COLOR = getComputedStyle(document.documentElement).getPropertyValue("--spark").trim();
  const logTelemetry = $("log-telemetry");
  let renderedAt = 0;
  let reorderedAt = -Infinity;
  let eventsAtRate = 0;
  let rateAt = performance.now();

  function render(now) {
    requestAnimationFrame(render);
    if (now - renderedAt < RENDER_EVERY_MS) return;
    renderedAt = now;
    if (gridOrderStale && now - reorderedAt >= REORDER_EVERY_MS) {
      reorderedAt = now;
      reorderGrid();
    }
    if (cardsStale) placeCards();
    for (const id of changed) {
      const record = devices.get(id);
      drawDevice(record);
      if (record.card !== null) drawCard(record);
    }
    changed.clear();
    drawLog();
    drawStats(now);
    if (connectionChanged) {
      const node = $("connection");
      node.dataset.state = connection.state;
      node.textContent = connection.text;
      connectionChanged = false;
    }
  }

  function reorderGrid() {
    gridOrderStale = false;
    const ids = [...devices.keys()].sort();
    const compact = ids.length > COMPACT_OVER;
    if (compact && !grid.classList.contains("compact")) {
      grid.classList.add("compact"); // small squares without labels from now on
      for (const record of devices.values()) if (record.cell !== null) record.cell.textContent = "";
    }
    const fragment = document.createDocumentFragment();
    for (const id of ids) {
      const record = devices.get(id);
      if (record.cell === null) {
        record.cell = el("span", "cell", compact ? undefined : id);
        record.cell.dataset.device = id;
        changed.add(id);
      }
      fragment.append(record.cell);
    }
    grid.replaceChildren(fragment);
    // Id suggestions for the command form, for fleets small enough to scroll through.
    const options = compact ? [] : ids.map((id) => Object.assign(el("option"), { value: id }));
    $("device-ids").replaceChildren(...options);
  }

  function drawDevice(record) {
    const cell = record.cell;
    if (cell === null || cell.dataset.state === record.state) return;
    cell.dataset.state = record.state;
    const status = {
      lost: "offline, last will: lost",
      clean: "offline, clean",
      offline: `offline, ${record.reason || "no reason given"}`,
    }[record.state];
    cell.title = `${record.id}: ${status ?? record.state}`;
  }

  function placeCards() {
    cardsStale = false;
    const cards = pinned.map((id) => {
      const record = devices.get(id);
      if (record.card === null) {
        record.card = el("article", "card");
        record.card.dataset.device = id;
        changed.add(id);
      }
      return record.card;
    });
    $("cards").replaceChildren(...cards);
  }

  function drawCard(record) {
    const card = record.card;
    const head = el("h3", "", record.id);
    head.append(el("span", "state", record.state === "lost" ? "offline (will)" : record.state));
    head.dataset.state = record.state;
    const rows = [head, el("p", "seq", record.seq === null ? "seq: none yet" : `seq ${record.seq}`)];
    for (const [name, series] of record.values) {
      const row = el("div", "metric");
      row.append(el("span", "name", name), el("span", "value", formatValue(series.latest)));
      if (series.samples.length > 1) row.append(sparkline(series.samples));
      rows.push(row);
    }
    card.replaceChildren(...rows);
  }

  function formatValue(value) {
    if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(2);
    if (typeof value === "boolean" || typeof value === "string") return String(value);
    if (value && typeof value.lat === "number" && typeof value.lon === "number") {
      return `${value.lat.toFixed(4)}, ${value.lon.toFixed(4)}`;
    }
    return JSON.stringify(value);
  }

  function sparkline(samples) {
    const canvas = el("canvas", "spark");
    const width = 90;
    const height = 28;
    const scale = window.devicePixelRatio || 1;
    canvas.width = width * scale;
    canvas.height = height * scale;
    const context = canvas.getContext("2d");
    context.scale(scale, scale);
    let low = Math.min(...samples);
    let high = Math.max(...samples);
    if (high === low) {
      low -= 1;
      high += 1;
    }
    context.strokeStyle = SPARK_COLOR;
    context.lineWidth = 1.5;
    context.beginPath();
    samples.forEach((sample, index) => {
      const x = (index / (samples.length - 1)) * (width - 2) + 1;
      const y = height - 2 - ((sample - low) / (high - low)) * (height - 4);
      if (index === 0) context.moveTo(x, y);
      else context.lineTo(x, y);
    });
    context.stroke();
    return canvas;
  }

  function drawLog() {
    if (logBacklog.length === 0) return;
    const list = $("log-list");
    const fragment = document.createDocumentFragment();
    for (let index = logBacklog.length - 1; index >= 0; index -= 1) {
      const entry = logBacklog[index];
      const item = el("li");
      item.dataset.kind = entry.kind;
      const time = el("time", "", entry.at.toLocaleTimeString());
      time.dateTime = entry.at.toISOString();
      item.append(
        time,
        el("span", "kind", entry.kind),
        el("span", "text", entry.text),
      );
      fragment.append(item);
    }
    logBacklog = [];
    list.prepend(fragment);
    while (list.childElementCount > LOG_ROWS) list.lastElementChild.remove();
  }

  function drawStats(now) {
    let online = 0;
    let lost = 0;
    let clean = 0;
    for (const record of devices.values()) {
      if (record.state === "online") online += 1;
      else if (record.state === "lost") lost += 1;
      else if (record.state === "clean") clean += 1;
    }
    if (now - rateAt >= 1000) {
      $("stat-rate").textContent = Math.round(((stats.events - eventsAtRate) * 1000) / (now - rateAt));
      eventsAtRate = stats.events;
      rateAt = now;
    }
    $("stat-devices").textContent = devices.size;
    $("stat-online").textContent = online;
    $("stat-lost").textContent = lost;
    $("stat-clean").textContent = clean;
    $("stat-dropped").textContent = stats.dropped;
    $("stat-gaps").textContent = stats.gaps;
    $("stat-device-reconnects").textContent = stats.deviceReconnects;
    $("stat-stream-reconnects").textContent = stats.streamReconnects;
    $("stat-last-id").textContent = stats.lastId ?? "none";
  }

  // Wiring.

  grid.addEventListener("click", (click) => {
    const id = click.target.dataset && click.target.dataset.device;
    if (!id) return;
    $("command-form").elements.device.value = id;
    pinned = [id, ...pinned.filter((other) => other !== id)];
    for (const unpinned of pinned.splice(CARDS)) devices.get(unpinned).card = null;
    cardsStale = true;
  });

  $("command-form").addEventListener("submit", (submit) => {
    submit.preventDefault();
    const form = submit.target.elements;
    sendCommand(form.device.value.trim(), form.op.value, form.value.value.trim());
  });

  for (const radio of document.querySelectorAll('input[name="transport"]')) {
    radio.checked = radio.value === transport;
    radio.addEventListener("change", () => switchTransport(radio.value));
  }

  // Login. A bridge with a tokens file answers /whoami with 401 until the page has logged in:
  // POST /login sets an HttpOnly cookie, which EventSource and WebSocket then send by themselves.

  async function loggedIn() {
    const response = await fetch("whoami", { credentials: "same-origin" });
    return response.ok;
  }

  function askForToken(why) {
    setConnection("down", why);
    $("login").hidden = false;
    $("login").elements.token.focus();
  }

  $("login").addEventListener("submit", async (submit) => {
    submit.preventDefault();
    const token = submit.target.elements.token.value.trim();
    const response = await fetch("login", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token }),
    });
    if (response.status !== 204) {
      $("login-error").textContent = response.status === 401 ? "unknown token" : `refused (${response.status})`;
      return;
    }
    submit.target.elements.token.value = "";
    $("login-error").textContent = "";
    $("login").hidden = true;
    log("connection", "logged in");
    setConnection("connecting", "connecting…");
    open();
  });

  loggedIn().then(
    (ok) => (ok ? open() : askForToken("this bridge needs a token: log in")),
    () => retryLater("the bridge cannot be reached"),
  );
  requestAnimationFrame(render);
})();
