/* Warren's web console: a small single-page app over the RabbitMQ-compatible management API.
 *
 * No framework and no build step. Every value from the API reaches the page through
 * textContent or attributes set with setAttribute (never innerHTML), so names and payloads
 * cannot inject markup. Credentials live in sessionStorage and go out as a Basic header.
 */
"use strict";

(() => {
  const AUTH_KEY = "warren.console.auth";
  const REFRESH_MS = 5000;
  const HISTORY_MS = 5 * 60 * 1000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const DEFAULT_EXCHANGE = "amq.default";
  const CLOSE_REASON = "Closed via the Warren console";

  // ---------------------------------------------------------------- DOM helpers

  /** Build an element: attrs may hold class, text, for, on<event> handlers and attributes. */
  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key.startsWith("on") && typeof value === "function") {
        node.addEventListener(key.slice(2), value);
      } else node.setAttribute(key === "className" ? "class" : key, value === true ? "" : value);
    }
  }

  function append(node, children) {
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  const $ = (id) => document.getElementById(id);

  /** Set text only when it changed, so live regions announce real changes only. */
  function setText(node, text) {
    const value = String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  // ---------------------------------------------------------------- formatting

  const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const decimal = new Intl.NumberFormat(undefined, {
    minimumFractionDigits: 1,
    maximumFractionDigits: 1,
  });

  function count(value) {
    return typeof value === "number" && Number.isFinite(value) ? integer.format(value) : "";
  }

  function rateOf(stats, key) {
    const details = stats && stats[key + "_details"];
    const rate = details && details.rate;
    return typeof rate === "number" && Number.isFinite(rate) ? rate : 0;
  }

  function rate(value) {
    return decimal.format(value);
  }

  function yesNo(value) {
    return value ? "yes" : "no";
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function timeText(ms) {
    if (typeof ms !== "number") return "";
    const d = new Date(ms);
    return (
      `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
    );
  }

  function timeNode(ms) {
    if (typeof ms !== "number") return "";
    return h("time", { datetime: new Date(ms).toISOString(), text: timeText(ms) });
  }

  function exchangeLabel(name) {
    return name === "" ? "(AMQP default)" : name;
  }

  function jsonText(value) {
    if (value === undefined || value === null) return "";
    if (typeof value === "object") {
      return Object.keys(value).length ? JSON.stringify(value) : "";
    }
    return String(value);
  }

  function bytesText(n) {
    if (typeof n !== "number") return "";
    if (n < 1024) return `${integer.format(n)} B`;
    if (n < 1024 * 1024) return `${decimal.format(n / 1024)} KiB`;
    return `${decimal.format(n / (1024 * 1024))} MiB`;
  }

  // ---------------------------------------------------------------- paths and routes

  const enc = encodeURIComponent;

  function apiPath(...segments) {
    return "/" + segments.map((s, i) => (i === 0 ? s : enc(s))).join("/");
  }

  function queueHref(vhost, name) {
    return `#/queues/${enc(vhost)}/${enc(name)}`;
  }

  function exchangeHref(vhost, name) {
    return `#/exchanges/${enc(vhost)}/${enc(name === "" ? DEFAULT_EXCHANGE : name)}`;
  }

  function parseHash() {
    const raw = location.hash.replace(/^#\/?/, "");
    const parts = raw === "" ? [] : raw.split("/");
    try {
      return parts.map((p) => decodeURIComponent(p));
    } catch (_error) {
      return ["?"];
    }
  }

  // ---------------------------------------------------------------- credentials

  function toBase64(text) {
    let binary = "";
    for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte);
    return btoa(binary);
  }

  function loadAuth() {
    try {
      const saved = JSON.parse(sessionStorage.getItem(AUTH_KEY) || "null");
      return saved && typeof saved.token === "string" ? saved : null;
    } catch (_error) {
      return null;
    }
  }

  function saveAuth(user, password) {
    const auth = { user, token: toBase64(`${user}:${password}`) };
    sessionStorage.setItem(AUTH_KEY, JSON.stringify(auth));
    return auth;
  }

  function clearAuth() {
    sessionStorage.removeItem(AUTH_KEY);
  }

  // ---------------------------------------------------------------- API access

  class ApiError extends Error {
    constructor(status, error, reason) {
      super(reason || error || `HTTP ${status}`);
      this.status = status;
      this.error = error;
      this.reason = reason;
    }

    describe() {
      if (this.status === 0) return this.reason;
      const what = this.error ? `${this.error}: ` : "";
      return `${what}${this.reason || "request failed"} (HTTP ${this.status})`;
    }
  }

  async function readError(response) {
    try {
      const body = await response.json();
      return {
        error: typeof body.error === "string" ? body.error : response.statusText,
        reason: typeof body.reason === "string" ? body.reason : JSON.stringify(body.reason),
      };
    } catch (_error) {
      return { error: response.statusText, reason: "" };
    }
  }

  /** One API call with the session's credentials; a 401 ends the session. */
  async function request(method, path, { body, headers = {}, token } = {}) {
    const auth = token ? { token } : loadAuth();
    if (!auth) {
      showLogin("Please log in.");
      throw new ApiError(401, "not_authorised", "Not logged in");
    }
    const init = {
      method,
      headers: { Accept: "application/json", Authorization: `Basic ${auth.token}`, ...headers },
      // "omit" keeps the browser's own Basic-auth prompt away on a 401.
      credentials: "omit",
      cache: "no-store",
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch("/api" + path, init);
    } catch (error) {
      throw new ApiError(0, "network", `Cannot reach the management API (${error.message}).`);
    }
    if (!response.ok) {
      const info = await readError(response);
      const failure = new ApiError(response.status, info.error, info.reason);
      if (response.status === 401 && !token) {
        const why = info.reason ? `: ${info.reason}` : "";
        showLogin(`The API refused your credentials${why}. Please log in again.`);
      }
      throw failure;
    }
    if (response.status === 204) return null;
    const text = await response.text();
    return text ? JSON.parse(text) : null;
  }

  const api = {
    get: (path) => request("GET", path),
    post: (path, body) => request("POST", path, { body }),
    put: (path, body) => request("PUT", path, { body }),
    del: (path, headers) => request("DELETE", path, { headers }),
  };

  // ---------------------------------------------------------------- alerts and notices

  const alerts = { source: null };

  function showError(error, source = "action") {
    if (error instanceof ApiError && error.status === 401) return; // the login form says it
    const text = error instanceof ApiError ? error.describe() : String(error.message || error);
    const box = $("alert");
    box.replaceChildren(
      h("p", {}, h("strong", { text: "Error: " }), text),
      h("button", {
        type: "button",
        class: "secondary small",
        text: "Dismiss",
        onclick: clearError,
      }),
    );
    box.classList.remove("is-empty");
    alerts.source = source;
    if (source === "action") box.scrollIntoView({ block: "nearest" });
  }

  function clearError(source) {
    if (typeof source === "string" && alerts.source !== source) return;
    $("alert").replaceChildren();
    $("alert").classList.add("is-empty");
    alerts.source = null;
  }

  const noticeTimers = new WeakMap();

  /** A success notice in `box` (a role="status" element; the page's own by default). */
  function notify(text, box = $("status")) {
    box.textContent = text;
    box.classList.remove("is-empty");
    clearTimeout(noticeTimers.get(box));
    noticeTimers.set(
      box,
      setTimeout(() => {
        box.textContent = "";
        box.classList.add("is-empty");
      }, 10000),
    );
  }

  function statusBox() {
    return h("p", { class: "status is-empty", role: "status", "aria-live": "polite" });
  }

  // ---------------------------------------------------------------- views, polling

  let current = null;

  /** The shown view's lifetime: its timers stop and late responses are dropped on leave. */
  class ViewContext {
    constructor() {
      this.alive = true;
      this.timers = [];
      this.runs = [];
    }

    /** Run `task` now and every REFRESH_MS while the view is shown, never two at once. */
    poll(task) {
      let busy = false;
      const run = async () => {
        if (busy || !this.alive) return;
        busy = true;
        try {
          await task();
          if (this.alive) clearError("refresh");
        } catch (error) {
          if (this.alive) showError(error, "refresh");
        } finally {
          busy = false;
        }
      };
      run();
      this.runs.push(run);
      this.timers.push(
        setInterval(() => {
          if (!document.hidden) run();
        }, REFRESH_MS),
      );
      return run;
    }

    /** Refresh at once (when the tab becomes visible again). */
    refreshNow() {
      this.runs.forEach((run) => run());
    }

    stop() {
      this.alive = false;
      this.timers.forEach(clearInterval);
    }
  }

  function stopView() {
    if (current) current.stop();
    current = null;
  }

  const routes = {
    overview: overviewView,
    connections: connectionsView,
    channels: channelsView,
    exchanges: exchangesView,
    queues: queuesView,
  };

  function route(focus) {
    const auth = loadAuth();
    if (!auth) {
      showLogin();
      return;
    }
    const parts = parseHash();
    if (parts.length === 0) {
      location.replace("#/overview");
      return;
    }
    const [section, ...rest] = parts;
    stopView();
    clearError();
    showApp(auth, section);
    const root = $("view");
    root.replaceChildren();
    const ctx = new ViewContext();
    current = ctx;
    const view = routes[section];
    if (view && (rest.length === 0 || ["queues", "exchanges"].includes(section))) {
      if (rest.length === 0) view(root, ctx);
      else if (rest.length === 2 && section === "queues") queueView(root, ctx, rest[0], rest[1]);
      else if (rest.length === 2) exchangeView(root, ctx, rest[0], rest[1]);
      else notFoundView(root);
    } else notFoundView(root);
    if (focus) {
      const heading = root.querySelector("h1");
      if (heading) heading.focus();
    }
  }

  function notFoundView(root) {
    document.title = "Not found · Warren";
    root.append(
      h("h1", { tabindex: "-1", text: "Page not found" }),
      h("p", {}, "No such page. ", h("a", { href: "#/overview", text: "Go to the overview" })),
    );
  }

  function pageHeader(root, title, subtitle) {
    document.title = `${title} · Warren`;
    const header = h("div", { class: "page-header" }, h("h1", { tabindex: "-1", text: title }));
    if (subtitle) header.append(h("p", { class: "subtitle" }, subtitle));
    root.append(header);
    return header;
  }

  // ---------------------------------------------------------------- login and session

  function showLogin(message) {
    stopView();
    clearAuth();
    clearError();
    $("view").replaceChildren();
    $("nav").hidden = true;
    $("session").hidden = true;
    $("node-info").textContent = "";
    $("login").hidden = false;
    document.title = "Log in · Warren";
    setText($("login-message"), message || "");
    $("login-message").classList.toggle("is-empty", !message);
    const field = $("login-username").value ? $("login-password") : $("login-username");
    field.focus();
  }

  function showApp(auth, section) {
    $("login").hidden = true;
    $("nav").hidden = false;
    $("session").hidden = false;
    setText($("whoami"), auth.user);
    for (const link of document.querySelectorAll("#nav a")) {
      if (link.dataset.section === section) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
  }

  async function logIn(event) {
    event.preventDefault();
    const user = $("login-username").value.trim();
    const password = $("login-password").value;
    if (!user) {
      setText($("login-message"), "Enter a username.");
      $("login-message").classList.remove("is-empty");
      $("login-username").focus();
      return;
    }
    const button = $("login-submit");
    button.disabled = true;
    const token = toBase64(`${user}:${password}`);
    try {
      const me = await request("GET", "/whoami", { token });
      saveAuth(me && me.name ? me.name : user, password);
      $("login-password").value = "";
      setText($("login-message"), "");
      $("login-message").classList.add("is-empty");
      loadNodeInfo();
      if (parseHash().length === 0 || location.hash === "#/login") location.hash = "#/overview";
      else route(true);
    } catch (error) {
      const reason =
        error instanceof ApiError && error.status === 401
          ? `Login failed: wrong username or password${error.reason ? ` (${error.reason})` : ""}.`
          : `Login failed: ${error instanceof ApiError ? error.describe() : error.message}`;
      setText($("login-message"), reason);
      $("login-message").classList.remove("is-empty");
      $("login-password").select();
    } finally {
      button.disabled = false;
    }
  }

  function logOut() {
    showLogin("You have logged out.");
    $("login-username").value = "";
    $("login-username").focus();
  }

  async function loadNodeInfo() {
    try {
      const overview = await api.get("/overview");
      const parts = [];
      if (overview.product_name && overview.product_version) {
        parts.push(`${overview.product_name} ${overview.product_version}`);
      } else if (overview.rabbitmq_version) parts.push(`RabbitMQ ${overview.rabbitmq_version}`);
      if (overview.cluster_name) parts.push(`cluster ${overview.cluster_name}`);
      if (overview.node) parts.push(`node ${overview.node}`);
      setText($("node-info"), parts.join(" · "));
    } catch (_error) {
      // The overview page reports errors; the header line is decoration.
    }
  }

  // ---------------------------------------------------------------- tables

  /**
   * A table whose rows are kept across refreshes (keyed), so focus on a link or button in a
   * row survives an update. A column has label, text(row) or build(row) (built once per
   * row key), and optional numeric / rowHeader / name (data-col).
   */
  function dataTable(caption, columns, key, emptyText) {
    const table = h("table", { class: "data" });
    table.append(h("caption", { class: "visually-hidden", text: caption }));
    const headRow = h("tr");
    for (const col of columns) {
      headRow.append(
        h("th", { scope: "col", class: col.numeric ? "num" : undefined, text: col.label }),
      );
    }
    table.append(h("thead", {}, headRow));
    const body = h("tbody");
    table.append(body);
    const wrap = h("div", {
      class: "table-wrap",
      role: "region",
      "aria-label": caption,
      tabindex: "0",
    });
    wrap.append(table);
    const empty = h("p", { class: "empty", text: emptyText, hidden: true });
    const rows = new Map();

    function update(items) {
      const seen = new Set();
      let previous = null;
      for (const item of items) {
        const id = key(item);
        seen.add(id);
        let tr = rows.get(id);
        if (!tr) {
          tr = h("tr", { "data-key": id });
          for (const col of columns) {
            const cell = h(col.rowHeader ? "th" : "td", {
              scope: col.rowHeader ? "row" : undefined,
              class: col.numeric ? "num" : undefined,
              "data-col": col.name,
            });
            if (col.build) append(cell, [col.build(item)]);
            tr.append(cell);
          }
          rows.set(id, tr);
        }
        columns.forEach((col, i) => {
          if (col.text) setText(tr.children[i], col.text(item));
        });
        const wanted = previous ? previous.nextSibling : body.firstChild;
        if (wanted !== tr) body.insertBefore(tr, wanted);
        previous = tr;
      }
      for (const [id, tr] of rows) {
        if (!seen.has(id)) {
          tr.remove();
          rows.delete(id);
        }
      }
      empty.hidden = items.length > 0;
      wrap.hidden = items.length === 0;
    }

    return { node: h("div", {}, wrap, empty), update };
  }

  function byVhostAndName(a, b) {
    return a.vhost === b.vhost ? cmp(a.name, b.name) : cmp(a.vhost, b.vhost);
  }

  function cmp(a, b) {
    return a < b ? -1 : a > b ? 1 : 0;
  }

  // ---------------------------------------------------------------- charts

  const niceSteps = [1, 2, 2.5, 5, 10];

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of niceSteps) if (step * power >= value) return step * power;
    return 10 * power;
  }

  /**
   * A line chart of `samples` (each {t, <series key>: number}) over the last HISTORY_MS,
   * drawn as inline SVG polylines. Returns {node, draw(samples)}.
   */
  function lineChart(title, series, unit) {
    const width = 600;
    const height = 160;
    const pad = { left: 48, right: 12, top: 12, bottom: 24 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const titleId = `chart-${Math.random().toString(36).slice(2)}`;
    const figure = h("figure", { class: "chart" });
    const caption = h("figcaption", { id: titleId, text: title });
    const image = svg("svg", {
      viewBox: `0 0 ${width} ${height}`,
      role: "img",
      "aria-labelledby": titleId,
      class: "chart-svg",
      focusable: "false",
    });
    const legend = h("ul", { class: "legend" });
    const values = {};
    for (const s of series) {
      values[s.key] = h("span", { class: "legend-value", text: "–" });
      legend.append(
        h(
          "li",
          {},
          h("span", { class: `swatch ${s.className}`, "aria-hidden": "true" }),
          `${s.label}: `,
          values[s.key],
        ),
      );
    }
    figure.append(caption, image, legend);

    function draw(samples) {
      const now = Date.now();
      const start = now - HISTORY_MS;
      const visible = samples.filter((p) => p.t >= start);
      let max = 0;
      for (const p of visible) for (const s of series) max = Math.max(max, p[s.key] || 0);
      const top = niceMax(max);
      const x = (t) => pad.left + ((t - start) / HISTORY_MS) * plotW;
      const y = (v) => pad.top + plotH - (Math.min(v, top) / top) * plotH;
      const parts = [];
      for (const fraction of [0, 0.5, 1]) {
        const gy = pad.top + plotH - fraction * plotH;
        parts.push(
          svg("line", { x1: pad.left, x2: pad.left + plotW, y1: gy, y2: gy, class: "grid" }),
          svg("text", {
            x: pad.left - 6,
            y: gy + 4,
            class: "axis-label",
            "text-anchor": "end",
            text: formatAxis(top * fraction),
          }),
        );
      }
      parts.push(
        svg("text", { x: pad.left, y: height - 6, class: "axis-label", text: "−5 min" }),
        svg("text", {
          x: pad.left + plotW,
          y: height - 6,
          class: "axis-label",
          "text-anchor": "end",
          text: "now",
        }),
      );
      for (const s of series) {
        const points = visible.map((p) => `${x(p.t).toFixed(1)},${y(p[s.key] || 0).toFixed(1)}`);
        if (points.length > 1) {
          parts.push(svg("polyline", { points: points.join(" "), class: `line ${s.className}` }));
        }
        const last = visible[visible.length - 1];
        if (last) {
          parts.push(
            svg("circle", {
              cx: x(last.t).toFixed(1),
              cy: y(last[s.key] || 0).toFixed(1),
              r: 3,
              class: `dot ${s.className}`,
            }),
          );
        }
      }
      image.replaceChildren(...parts);
      image.setAttribute("data-samples", String(visible.length));
      const last = visible[visible.length - 1];
      for (const s of series) {
        const v = last ? last[s.key] || 0 : null;
        setText(values[s.key], v === null ? "–" : unit === "rate" ? `${rate(v)}/s` : count(v));
      }
    }

    return { node: figure, draw };
  }

  function formatAxis(value) {
    if (value === 0) return "0";
    if (value >= 1000) return integer.format(value);
    return Number.isInteger(value) ? String(value) : String(Number(value.toFixed(2)));
  }

  function remember(history, sample) {
    history.push(sample);
    const cutoff = Date.now() - HISTORY_MS - REFRESH_MS;
    while (history.length && history[0].t < cutoff) history.shift();
  }

  /** A definition list whose values are updated in place; returns {node, set(key, value)}. */
  function facts(items, attrs) {
    const extra = attrs && attrs.class ? ` ${attrs.class}` : "";
    const dl = h("dl", { ...(attrs || {}), class: `facts${extra}` });
    const cells = {};
    for (const [key, label] of items) {
      cells[key] = h("dd", { "data-field": key, text: "" });
      dl.append(h("div", { class: "fact" }, h("dt", { text: label }), cells[key]));
    }
    return {
      node: dl,
      set(key, value) {
        if (value instanceof Node) cells[key].replaceChildren(value);
        else setText(cells[key], value);
      },
    };
  }

  const rateSeries = [
    { key: "publish", label: "Publish", className: "s1" },
    { key: "deliver", label: "Deliver / get", className: "s2" },
    { key: "ack", label: "Acknowledge", className: "s3" },
  ];
  const depthSeries = [
    { key: "ready", label: "Ready", className: "s1" },
    { key: "unacked", label: "Unacked", className: "s4" },
    { key: "total", label: "Total", className: "s5" },
  ];

  // ---------------------------------------------------------------- overview

  const overviewHistory = [];

  function overviewView(root, ctx) {
    pageHeader(root, "Overview");
    const totals = facts(
      [
        ["connections", "Connections"],
        ["channels", "Channels"],
        ["exchanges", "Exchanges"],
        ["queues", "Queues"],
        ["consumers", "Consumers"],
      ],
      { id: "object-totals" },
    );
    const queued = facts(
      [
        ["messages", "Total"],
        ["messages_ready", "Ready"],
        ["messages_unacknowledged", "Unacked"],
      ],
      { id: "queue-totals" },
    );
    const rates = facts(
      [
        ["publish", "Publish"],
        ["deliver_get", "Deliver / get"],
        ["ack", "Acknowledge"],
      ],
      { id: "message-rates" },
    );
    const rateChart = lineChart("Message rates, last five minutes", rateSeries, "rate");
    const depthChart = lineChart("Queued messages, last five minutes", depthSeries, "count");
    root.append(
      h(
        "section",
        { class: "panel", "aria-labelledby": "totals-heading", "aria-live": "polite" },
        h("h2", { id: "totals-heading", text: "Totals" }),
        totals.node,
      ),
      h(
        "div",
        { class: "columns" },
        h(
          "section",
          { class: "panel", "aria-labelledby": "queued-heading" },
          h("h2", { id: "queued-heading", text: "Queued messages" }),
          h("div", { "aria-live": "polite" }, queued.node),
          depthChart.node,
        ),
        h(
          "section",
          { class: "panel", "aria-labelledby": "rates-heading" },
          h("h2", { id: "rates-heading", text: "Message rates (per second)" }),
          h("div", { "aria-live": "polite" }, rates.node),
          rateChart.node,
        ),
      ),
      h("p", { class: "hint", text: "Charts sample the API every 5 seconds while open." }),
    );
    rateChart.draw(overviewHistory);
    depthChart.draw(overviewHistory);
    ctx.poll(async () => {
      const data = await api.get("/overview");
      if (!ctx.alive) return;
      const objects = data.object_totals || {};
      for (const key of ["connections", "channels", "exchanges", "queues", "consumers"]) {
        totals.set(key, count(objects[key]));
      }
      const q = data.queue_totals || {};
      for (const key of ["messages", "messages_ready", "messages_unacknowledged"]) {
        queued.set(key, count(q[key] ?? 0));
      }
      const stats = data.message_stats || {};
      for (const key of ["publish", "deliver_get", "ack"]) {
        rates.set(key, `${rate(rateOf(stats, key))}/s`);
      }
      remember(overviewHistory, {
        t: Date.now(),
        publish: rateOf(stats, "publish"),
        deliver: rateOf(stats, "deliver_get"),
        ack: rateOf(stats, "ack"),
        ready: q.messages_ready || 0,
        unacked: q.messages_unacknowledged || 0,
        total: q.messages || 0,
      });
      rateChart.draw(overviewHistory);
      depthChart.draw(overviewHistory);
    });
  }

  // ---------------------------------------------------------------- connections and channels

  function connectionsView(root, ctx) {
    pageHeader(root, "Connections");
    let refresh = null;
    const table = dataTable(
      "Connections",
      [
        { label: "Name", name: "name", rowHeader: true, text: (c) => c.name },
        { label: "User", name: "user", text: (c) => c.user ?? "" },
        { label: "Virtual host", name: "vhost", text: (c) => c.vhost ?? "" },
        { label: "Protocol", name: "protocol", text: (c) => c.protocol ?? "" },
        { label: "State", name: "state", text: (c) => c.state ?? "" },
        { label: "Channels", name: "channels", numeric: true, text: (c) => count(c.channels) },
        { label: "Connected at", name: "connected_at", build: (c) => timeNode(c.connected_at) },
        { label: "Actions", name: "actions", build: (c) => closeControl(c, () => refresh()) },
      ],
      (c) => c.name,
      "No connections.",
    );
    root.append(h("section", { class: "panel", "aria-label": "Connections list" }, table.node));
    refresh = ctx.poll(async () => {
      const list = await api.get("/connections");
      if (ctx.alive) table.update([...list].sort((a, b) => cmp(a.name, b.name)));
    });
  }

  /** Close with a confirm step: the first button asks, the second closes. */
  function closeControl(connection, after) {
    const box = h("div", { class: "inline-confirm" });
    const ask = h("button", {
      type: "button",
      class: "danger small",
      text: "Close",
      "aria-label": `Close connection ${connection.name}`,
    });
    box.append(ask);
    ask.addEventListener("click", () => {
      const yes = h("button", {
        type: "button",
        class: "danger small",
        text: "Confirm close",
        "aria-label": `Confirm closing connection ${connection.name}`,
      });
      const no = h("button", { type: "button", class: "secondary small", text: "Cancel" });
      no.addEventListener("click", () => {
        box.replaceChildren(ask);
        ask.focus();
      });
      yes.addEventListener("click", async () => {
        yes.disabled = true;
        try {
          await api.del(apiPath("connections", connection.name), { "X-Reason": CLOSE_REASON });
          notify(`Connection ${connection.name} closed.`);
          after();
        } catch (error) {
          showError(error);
          box.replaceChildren(ask);
        }
      });
      box.replaceChildren(yes, no);
      yes.focus();
    });
    return box;
  }

  function channelsView(root, ctx) {
    pageHeader(root, "Channels");
    const table = dataTable(
      "Channels",
      [
        { label: "Channel", name: "name", rowHeader: true, text: (c) => c.name },
        { label: "User", name: "user", text: (c) => c.user ?? "" },
        { label: "Virtual host", name: "vhost", text: (c) => c.vhost ?? "" },
        { label: "State", name: "state", text: (c) => c.state ?? "" },
        {
          label: "Consumers",
          name: "consumer_count",
          numeric: true,
          text: (c) => count(c.consumer_count),
        },
        {
          label: "Prefetch",
          name: "prefetch_count",
          numeric: true,
          text: (c) => count(c.prefetch_count),
        },
        {
          label: "Unacked",
          name: "messages_unacknowledged",
          numeric: true,
          text: (c) => count(c.messages_unacknowledged),
        },
        { label: "Confirm", name: "confirm", text: (c) => yesNo(c.confirm) },
        { label: "Transactional", name: "transactional", text: (c) => yesNo(c.transactional) },
      ],
      (c) => c.name,
      "No channels.",
    );
    root.append(h("section", { class: "panel", "aria-label": "Channels list" }, table.node));
    ctx.poll(async () => {
      const list = await api.get("/channels");
      if (ctx.alive) table.update([...list].sort((a, b) => cmp(a.name, b.name)));
    });
  }

  // ---------------------------------------------------------------- exchanges

  function exchangesView(root, ctx) {
    pageHeader(root, "Exchanges");
    const table = dataTable(
      "Exchanges",
      [
        { label: "Virtual host", name: "vhost", text: (e) => e.vhost },
        {
          label: "Name",
          name: "name",
          rowHeader: true,
          build: (e) => h("a", { href: exchangeHref(e.vhost, e.name), text: exchangeLabel(e.name) }),
        },
        { label: "Type", name: "type", text: (e) => e.type ?? "" },
        { label: "Durable", name: "durable", text: (e) => yesNo(e.durable) },
        { label: "Internal", name: "internal", text: (e) => yesNo(e.internal) },
        { label: "Policy", name: "policy", text: (e) => e.policy || "" },
        {
          label: "In /s",
          name: "rate_in",
          numeric: true,
          text: (e) => rate(rateOf(e.message_stats, "publish_in")),
        },
        {
          label: "Out /s",
          name: "rate_out",
          numeric: true,
          text: (e) => rate(rateOf(e.message_stats, "publish_out")),
        },
      ],
      (e) => `${e.vhost}\u0000${e.name}`,
      "No exchanges.",
    );
    root.append(h("section", { class: "panel", "aria-label": "Exchanges list" }, table.node));
    ctx.poll(async () => {
      const list = await api.get("/exchanges");
      if (ctx.alive) table.update([...list].sort(byVhostAndName));
    });
  }

  function exchangeView(root, ctx, vhost, name) {
    const label = exchangeLabel(name === DEFAULT_EXCHANGE ? "" : name);
    pageHeader(root, `Exchange ${label}`, `Virtual host ${vhost}`);
    root.querySelector(".page-header").prepend(
      h("p", { class: "crumbs" }, h("a", { href: "#/exchanges", text: "Exchanges" })),
    );
    const details = facts([
      ["type", "Type"],
      ["durable", "Durable"],
      ["auto_delete", "Auto-delete"],
      ["internal", "Internal"],
      ["policy", "Policy"],
      ["arguments", "Arguments"],
      ["rate_in", "Publish in"],
      ["rate_out", "Publish out"],
    ], { class: "compact" });
    const bindings = dataTable(
      "Bindings from this exchange",
      [
        {
          label: "Destination",
          name: "destination",
          rowHeader: true,
          build: (b) =>
            b.destination_type === "queue"
              ? h("a", { href: queueHref(b.vhost, b.destination), text: b.destination })
              : h("a", { href: exchangeHref(b.vhost, b.destination), text: b.destination }),
        },
        { label: "Type", name: "destination_type", text: (b) => b.destination_type },
        { label: "Routing key", name: "routing_key", text: (b) => b.routing_key },
        { label: "Arguments", name: "arguments", text: (b) => jsonText(b.arguments) },
      ],
      (b) => `${b.destination_type}\u0000${b.destination}\u0000${b.properties_key}`,
      "No bindings.",
    );
    const path = apiPath("exchanges", vhost, name);
    root.append(
      h(
        "section",
        { class: "panel", "aria-labelledby": "details-heading" },
        h("h2", { id: "details-heading", text: "Details" }),
        details.node,
      ),
      h(
        "section",
        { class: "panel", "aria-labelledby": "bindings-heading" },
        h("h2", { id: "bindings-heading", text: "Bindings" }),
        bindings.node,
      ),
      publishPanel(vhost, name, null),
    );
    ctx.poll(async () => {
      const [exchange, list] = await Promise.all([
        api.get(path),
        api.get(`${path}/bindings/source`),
      ]);
      if (!ctx.alive) return;
      details.set("type", exchange.type ?? "");
      details.set("durable", yesNo(exchange.durable));
      details.set("auto_delete", yesNo(exchange.auto_delete));
      details.set("internal", yesNo(exchange.internal));
      details.set("policy", exchange.policy || "none");
      details.set("arguments", jsonText(exchange.arguments) || "none");
      details.set("rate_in", `${rate(rateOf(exchange.message_stats, "publish_in"))}/s`);
      details.set("rate_out", `${rate(rateOf(exchange.message_stats, "publish_out"))}/s`);
      bindings.update(list);
    });
  }

  // ---------------------------------------------------------------- publishing

  let formIds = 0;

  function field(label, control, hint) {
    const id = `f${++formIds}`;
    control.id = id;
    const wrap = h("div", { class: "field" }, h("label", { for: id, text: label }), control);
    if (hint) {
      const hintId = `${id}-hint`;
      control.setAttribute("aria-describedby", hintId);
      wrap.append(h("p", { class: "hint", id: hintId, text: hint }));
    }
    return wrap;
  }

  function select(name, options, selected) {
    const node = h("select", { name });
    for (const [value, label] of options) {
      node.append(h("option", { value, text: label, selected: value === selected }));
    }
    return node;
  }

  /** Publish through an exchange (the default one, to a queue, when `queueName` is given). */
  function publishPanel(vhost, exchangeName, queueName) {
    const toQueue = queueName !== null;
    const key = h("input", { name: "routing_key", autocomplete: "off" });
    const mode = select(
      "delivery_mode",
      [
        ["1", "1 – Non-persistent"],
        ["2", "2 – Persistent"],
      ],
      "1",
    );
    const headers = h("input", { name: "headers", autocomplete: "off", placeholder: "{}" });
    const payload = h("textarea", { name: "payload", rows: "4" });
    const button = h("button", { type: "submit", text: "Publish message" });
    const done = statusBox();
    done.id = "publish-status";
    const form = h(
      "form",
      { class: "form", "aria-labelledby": `publish-heading` },
      toQueue
        ? h("p", { class: "hint", text: `Sent through the default exchange to ${queueName}.` })
        : field("Routing key", key),
      field("Delivery mode", mode),
      field("Headers (JSON object)", headers, "Optional, e.g. {\"x-source\": \"console\"}"),
      field("Payload", payload),
      h("div", { class: "actions" }, button),
      done,
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const properties = { delivery_mode: Number(mode.value) };
      if (headers.value.trim()) {
        try {
          const parsed = JSON.parse(headers.value);
          if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) throw new Error();
          properties.headers = parsed;
        } catch (_error) {
          showError(new Error("Headers must be a JSON object."));
          headers.focus();
          return;
        }
      }
      button.disabled = true;
      try {
        const name = exchangeName === "" ? DEFAULT_EXCHANGE : exchangeName;
        const result = await api.post(apiPath("exchanges", vhost, name, "publish"), {
          properties,
          routing_key: toQueue ? queueName : key.value,
          payload: payload.value,
          payload_encoding: "string",
        });
        clearError();
        const routed = result && result.routed;
        notify(routed ? "Message published." : "Message published, but not routed.", done);
      } catch (error) {
        showError(error);
      } finally {
        button.disabled = false;
      }
    });
    return h(
      "section",
      { class: "panel", "aria-labelledby": "publish-heading" },
      h("h2", { id: "publish-heading", text: "Publish message" }),
      form,
    );
  }

  // ---------------------------------------------------------------- queues

  function queuesView(root, ctx) {
    pageHeader(root, "Queues");
    const filter = h("input", { type: "search", name: "filter", autocomplete: "off" });
    let latest = [];
    const table = dataTable(
      "Queues",
      [
        { label: "Virtual host", name: "vhost", text: (q) => q.vhost },
        {
          label: "Name",
          name: "name",
          rowHeader: true,
          build: (q) => h("a", { href: queueHref(q.vhost, q.name), text: q.name }),
        },
        { label: "Type", name: "type", text: (q) => q.type ?? "" },
        { label: "Policy", name: "policy", text: (q) => q.policy || "" },
        { label: "State", name: "state", text: (q) => q.state ?? "" },
        { label: "Ready", name: "ready", numeric: true, text: (q) => count(q.messages_ready) },
        {
          label: "Unacked",
          name: "unacked",
          numeric: true,
          text: (q) => count(q.messages_unacknowledged),
        },
        { label: "Total", name: "total", numeric: true, text: (q) => count(q.messages) },
        {
          label: "Incoming /s",
          name: "incoming",
          numeric: true,
          text: (q) => rate(rateOf(q.message_stats, "publish")),
        },
        {
          label: "Deliver / get /s",
          name: "deliver",
          numeric: true,
          text: (q) => rate(rateOf(q.message_stats, "deliver_get")),
        },
        {
          label: "Ack /s",
          name: "ack",
          numeric: true,
          text: (q) => rate(rateOf(q.message_stats, "ack")),
        },
        { label: "Consumers", name: "consumers", numeric: true, text: (q) => count(q.consumers) },
      ],
      (q) => `${q.vhost}\u0000${q.name}`,
      "No queues.",
    );
    const show = () => {
      const needle = filter.value.trim().toLowerCase();
      table.update(needle ? latest.filter((q) => q.name.toLowerCase().includes(needle)) : latest);
    };
    filter.addEventListener("input", show);
    let refresh = null;
    root.append(
      h(
        "section",
        { class: "panel", "aria-label": "Queues list" },
        h("div", { class: "toolbar" }, field("Filter by name", filter)),
        table.node,
      ),
      addQueuePanel(() => refresh()),
    );
    refresh = ctx.poll(async () => {
      const list = await api.get("/queues");
      if (!ctx.alive) return;
      latest = [...list].sort(byVhostAndName);
      show();
    });
  }

  function addQueuePanel(after) {
    const vhost = h("input", { name: "vhost", value: "/", autocomplete: "off", required: true });
    const name = h("input", { name: "name", autocomplete: "off", required: true });
    const type = select(
      "type",
      [
        ["classic", "Classic"],
        ["quorum", "Quorum"],
      ],
      "classic",
    );
    const durable = select(
      "durable",
      [
        ["true", "Durable"],
        ["false", "Transient"],
      ],
      "true",
    );
    const button = h("button", { type: "submit", text: "Add queue" });
    const form = h(
      "form",
      { class: "form inline-form", "aria-labelledby": "add-queue-heading" },
      field("Virtual host", vhost),
      field("Name", name),
      field("Type", type),
      field("Durability", durable),
      h("div", { class: "actions" }, button),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (!name.value) {
        showError(new Error("Enter a queue name."));
        name.focus();
        return;
      }
      button.disabled = true;
      try {
        const body = { durable: durable.value === "true", auto_delete: false, arguments: {} };
        if (type.value !== "classic") body.arguments["x-queue-type"] = type.value;
        await api.put(apiPath("queues", vhost.value, name.value), body);
        clearError();
        notify(`Queue ${name.value} added.`);
        name.value = "";
        after();
      } catch (error) {
        showError(error);
      } finally {
        button.disabled = false;
      }
    });
    return h(
      "section",
      { class: "panel", "aria-labelledby": "add-queue-heading" },
      h("h2", { id: "add-queue-heading", text: "Add a queue" }),
      form,
    );
  }

  const queueHistories = new Map();

  function queueView(root, ctx, vhost, name) {
    pageHeader(root, `Queue ${name}`, `Virtual host ${vhost}`);
    root.querySelector(".page-header").prepend(
      h("p", { class: "crumbs" }, h("a", { href: "#/queues", text: "Queues" })),
    );
    const path = apiPath("queues", vhost, name);
    const historyKey = `${vhost}\u0000${name}`;
    if (!queueHistories.has(historyKey)) queueHistories.set(historyKey, []);
    const history = queueHistories.get(historyKey);

    const details = facts([
      ["type", "Type"],
      ["state", "State"],
      ["features", "Features"],
      ["policy", "Policy"],
      ["arguments", "Arguments"],
      ["consumers", "Consumers"],
      ["node", "Node"],
      ["memory", "Memory"],
    ], { class: "compact" });
    const depth = facts(
      [
        ["ready", "Ready"],
        ["unacked", "Unacked"],
        ["total", "Total"],
        ["incoming", "Incoming"],
        ["deliver", "Deliver / get"],
        ["ack", "Acknowledge"],
      ],
      { id: "queue-depth", "aria-live": "polite" },
    );
    const chart = lineChart("Queued messages", depthSeries, "count");
    const bindings = dataTable(
      "Bindings to this queue",
      [
        {
          label: "From exchange",
          name: "source",
          rowHeader: true,
          build: (b) => h("a", { href: exchangeHref(b.vhost, b.source), text: exchangeLabel(b.source) }),
        },
        { label: "Routing key", name: "routing_key", text: (b) => b.routing_key },
        { label: "Arguments", name: "arguments", text: (b) => jsonText(b.arguments) },
      ],
      (b) => `${b.source}\u0000${b.properties_key}`,
      "No bindings.",
    );

    root.append(
      h(
        "div",
        { class: "columns" },
        h(
          "section",
          { class: "panel", "aria-labelledby": "messages-heading" },
          h("h2", { id: "messages-heading", text: "Messages" }),
          depth.node,
          chart.node,
        ),
        h(
          "section",
          { class: "panel", "aria-labelledby": "details-heading" },
          h("h2", { id: "details-heading", text: "Details" }),
          details.node,
        ),
      ),
      h(
        "section",
        { class: "panel", "aria-labelledby": "bindings-heading" },
        h("h2", { id: "bindings-heading", text: "Bindings" }),
        bindings.node,
      ),
      h(
        "div",
        { class: "columns" },
        publishPanel(vhost, "", name),
        getPanel(path, () => refresh()),
      ),
      dangerPanel(vhost, name, path, () => refresh()),
    );
    chart.draw(history);

    const refresh = ctx.poll(async () => {
      const [queue, list] = await Promise.all([api.get(path), api.get(`${path}/bindings`)]);
      if (!ctx.alive) return;
      const features = [
        queue.durable ? "durable" : "transient",
        queue.auto_delete ? "auto-delete" : null,
        queue.exclusive ? "exclusive" : null,
      ].filter(Boolean);
      details.set("type", queue.type ?? "");
      details.set("state", queue.state ?? "");
      details.set("features", features.join(", "));
      details.set("policy", queue.policy || "none");
      details.set("arguments", jsonText(queue.arguments) || "none");
      details.set("consumers", count(queue.consumers));
      details.set("node", queue.node ?? "");
      details.set("memory", bytesText(queue.memory));
      depth.set("ready", count(queue.messages_ready));
      depth.set("unacked", count(queue.messages_unacknowledged));
      depth.set("total", count(queue.messages));
      depth.set("incoming", `${rate(rateOf(queue.message_stats, "publish"))}/s`);
      depth.set("deliver", `${rate(rateOf(queue.message_stats, "deliver_get"))}/s`);
      depth.set("ack", `${rate(rateOf(queue.message_stats, "ack"))}/s`);
      remember(history, {
        t: Date.now(),
        ready: queue.messages_ready || 0,
        unacked: queue.messages_unacknowledged || 0,
        total: queue.messages || 0,
      });
      chart.draw(history);
      bindings.update(list);
    });
  }

  function getPanel(path, after) {
    const countInput = h("input", {
      name: "count",
      type: "number",
      min: "1",
      max: "1000",
      value: "1",
      inputmode: "numeric",
    });
    const ackmode = select(
      "ackmode",
      [
        ["ack_requeue_true", "Nack message, requeue true"],
        ["ack_requeue_false", "Automatic ack"],
        ["reject_requeue_true", "Reject, requeue true"],
        ["reject_requeue_false", "Reject, requeue false"],
      ],
      "ack_requeue_true",
    );
    const encoding = select(
      "encoding",
      [
        ["auto", "Auto string / base64"],
        ["base64", "base64"],
      ],
      "auto",
    );
    const button = h("button", { type: "submit", text: "Get messages" });
    const results = h("div", { class: "messages", id: "get-results", "aria-live": "polite" });
    const form = h(
      "form",
      { class: "form", "aria-labelledby": "get-heading" },
      field("Ack mode", ackmode),
      field("Encoding", encoding),
      field("Number of messages", countInput),
      h("div", { class: "actions" }, button),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const n = Number.parseInt(countInput.value, 10);
      if (!(n >= 1)) {
        showError(new Error("Number of messages must be a whole number of at least 1."));
        countInput.focus();
        return;
      }
      button.disabled = true;
      try {
        const messages = await api.post(`${path}/get`, {
          count: n,
          ackmode: ackmode.value,
          encoding: encoding.value,
          truncate: 50000,
        });
        clearError();
        renderMessages(results, messages || []);
        after();
      } catch (error) {
        showError(error);
      } finally {
        button.disabled = false;
      }
    });
    return h(
      "section",
      { class: "panel", "aria-labelledby": "get-heading" },
      h("h2", { id: "get-heading", text: "Get messages" }),
      h("p", {
        class: "hint",
        text: "Getting messages is destructive unless the ack mode requeues them.",
      }),
      form,
      results,
    );
  }

  function renderMessages(container, messages) {
    if (messages.length === 0) {
      container.replaceChildren(h("p", { class: "empty", text: "Queue is empty." }));
      return;
    }
    const nodes = messages.map((m, i) => {
      const info = facts([
        ["exchange", "Exchange"],
        ["routing_key", "Routing key"],
        ["redelivered", "Redelivered"],
        ["remaining", "Messages left in queue"],
        ["properties", "Properties"],
        ["payload_size", "Payload size"],
      ], { class: "compact" });
      info.set("exchange", exchangeLabel(m.exchange ?? ""));
      info.set("routing_key", m.routing_key ?? "");
      info.set("redelivered", yesNo(m.redelivered));
      info.set("remaining", count(m.message_count));
      info.set("properties", propertiesNode(m.properties));
      info.set(
        "payload_size",
        `${count(m.payload_bytes)} bytes, encoding: ${m.payload_encoding ?? ""}`,
      );
      return h(
        "article",
        { class: "message", "aria-label": `Message ${i + 1}` },
        h("h3", { text: `Message ${i + 1}` }),
        info.node,
        h("pre", {
          class: "payload",
          tabindex: "0",
          "aria-label": `Payload of message ${i + 1}`,
          text: m.payload ?? "",
        }),
      );
    });
    container.replaceChildren(...nodes);
  }

  function propertiesNode(properties) {
    const entries = Object.entries(properties || {});
    if (entries.length === 0) return document.createTextNode("none");
    const list = h("ul", { class: "props" });
    for (const [key, value] of entries) {
      const text = typeof value === "object" ? JSON.stringify(value) : String(value);
      list.append(h("li", {}, h("code", { text: key }), ` = ${text}`));
    }
    return list;
  }

  function dangerPanel(vhost, name, path, after) {
    const done = statusBox();
    done.id = "purge-status";
    const purge = confirmButton(
      "Purge messages",
      `Purge all messages from queue ${name}?`,
      "Yes, purge",
      async () => {
        await api.del(`${path}/contents`);
        notify(`Queue ${name} purged.`, done);
        after();
      },
    );
    const remove = confirmButton(
      "Delete queue",
      `Delete queue ${name} and its messages?`,
      "Yes, delete",
      async () => {
        await api.del(path);
        location.hash = "#/queues";
        notify(`Queue ${name} deleted.`);
      },
    );
    return h(
      "section",
      { class: "panel danger-zone", "aria-labelledby": "danger-heading" },
      h("h2", { id: "danger-heading", text: "Purge or delete" }),
      h("div", { class: "danger-actions" }, purge, remove),
      done,
    );
  }

  /** A destructive button with a confirm step; `action` runs only after the second click. */
  function confirmButton(label, question, yesLabel, action) {
    const box = h("div", { class: "confirm-box" });
    const start = h("button", { type: "button", class: "danger", text: label });
    box.append(start);
    start.addEventListener("click", () => {
      const yes = h("button", { type: "button", class: "danger", text: yesLabel });
      const no = h("button", { type: "button", class: "secondary", text: "Cancel" });
      const prompt = h(
        "div",
        { class: "confirm", role: "group", "aria-label": question },
        h("p", { text: question }),
        yes,
        no,
      );
      no.addEventListener("click", () => {
        box.replaceChildren(start);
        start.focus();
      });
      yes.addEventListener("click", async () => {
        yes.disabled = true;
        try {
          await action();
          clearError();
        } catch (error) {
          showError(error);
        } finally {
          if (start.isConnected || box.isConnected) {
            box.replaceChildren(start);
            start.focus();
          }
        }
      });
      box.replaceChildren(prompt);
      yes.focus();
    });
    return box;
  }

  // ---------------------------------------------------------------- start

  function start() {
    $("login-form").addEventListener("submit", logIn);
    $("logout").addEventListener("click", logOut);
    $("skip-link").addEventListener("click", (event) => {
      event.preventDefault();
      const heading = document.querySelector("#view h1, #login h1");
      (heading || $("main")).focus();
    });
    window.addEventListener("hashchange", () => route(true));
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && current) current.refreshNow();
    });
    if (loadAuth()) {
      loadNodeInfo();
      route(false);
    } else showLogin();
  }

  start();
})();
