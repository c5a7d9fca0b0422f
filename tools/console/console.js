// keygate key console. Plain JavaScript, no dependencies, no build step.
//
// Every action is one call to the admin API of this same service, with the admin token the
// person signed in with. The token lives in this tab's sessionStorage (never localStorage,
// never a URL); a new secret lives only in the dialog that shows it. The page holds no rule
// the API does not enforce: the checks here only save a round trip.
"use strict";

(() => {
  const TOKEN_KEY = "keygate.console.adminToken";
  const MAX_GRACE = 315360000;
  const $ = (id) => document.getElementById(id);

  const state = {
    token: null,
    owner: "",
    unusedDays: "", // list only keys unused for this many days
    limit: 50,
    cursors: [""], // the `after` of each page seen so far
    page: 0,
    next: null,
    entries: new Map(),
    editing: null, // the entry being edited, or null when creating
    target: null, // the key id a rotate or delete dialog is about
    sentOrigins: [], // the origin inputs in the order their values were sent
    ownerLimits: "", // the owner's limits as the key dialog opened with them
    auditNext: null,
    keysCall: 0, // the number of the latest key list call
    auditCall: 0,
  };

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || `HTTP ${status}`);
      this.status = status;
      this.body = body || {};
      this.path = this.body.path;
    }
  }

  // ---- The admin API -------------------------------------------------------------------

  async function api(method, path, body, token = state.token) {
    const headers = { Accept: "application/json", Authorization: `Bearer ${token}` };
    const init = { method, headers, credentials: "omit", cache: "no-store", redirect: "error" };
    if (body !== undefined) {
      headers["Content-Type"] = method === "PATCH" ? "application/merge-patch+json" : "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, { message: "cannot reach the key service" });
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (e) {
        data = { message: text.slice(0, 300) };
      }
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  const keyPath = (id) => `/v1/keys/${encodeURIComponent(id)}`;

  function describe(err) {
    if (!(err instanceof ApiError)) return String(err);
    if (err.status === 0) return "Cannot reach the key service.";
    const where = err.path ? ` (${err.path})` : "";
    return `${err.status} ${err.body.error || ""}: ${err.message}${where}`.replace(" :", ":");
  }

  // A refused token anywhere means the session is over.
  function unauthorized(err) {
    if (err instanceof ApiError && err.status === 401) {
      signOut("The service refused the admin token (401 Invalid API key). Sign in again.");
      return true;
    }
    return false;
  }

  // ---- Views and sign-in ---------------------------------------------------------------

  function show(view) {
    for (const v of ["signin", "keys", "audit"]) $(`${v}-view`).hidden = v !== view;
    const signedIn = view !== "signin";
    $("nav").hidden = !signedIn;
    $("sign-out").hidden = !signedIn;
    $("tab-keys").setAttribute("aria-current", view === "keys" ? "page" : "false");
    $("tab-audit").setAttribute("aria-current", view === "audit" ? "page" : "false");
  }

  async function signIn(event) {
    event.preventDefault();
    const input = $("token");
    const token = input.value.trim();
    const error = $("signin-error");
    error.textContent = "";
    input.removeAttribute("aria-invalid");
    if (!token) {
      error.textContent = "Enter an admin token.";
      input.setAttribute("aria-invalid", "true");
      input.focus();
      return;
    }
    $("signin-button").disabled = true;
    try {
      await api("GET", "/v1/keys?limit=1", undefined, token);
    } catch (err) {
      error.textContent =
        err.status === 401
          ? "Wrong admin token: the service refused it (401 Invalid API key)."
          : `Cannot sign in: ${describe(err)}`;
      input.setAttribute("aria-invalid", "true");
      input.select();
      input.focus();
      return;
    } finally {
      $("signin-button").disabled = false;
    }
    input.value = "";
    state.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
    openKeys(true);
  }

  function signOut(message) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    for (const d of document.querySelectorAll("dialog[open]")) d.close();
    $("secret-value").value = "";
    $("key-rows").replaceChildren();
    $("audit-rows").replaceChildren();
    state.entries.clear();
    $("signin-error").textContent = message || "";
    show("signin");
    $("token").focus();
  }

  function openKeys(reset) {
    show("keys");
    if (reset) {
      state.cursors = [""];
      state.page = 0;
    }
    loadKeys();
  }

  function openAudit() {
    show("audit");
    loadAudit(true);
  }

  // ---- The key list --------------------------------------------------------------------

  function status(el, text, bad = false) {
    el.textContent = text;
    el.classList.toggle("bad", bad);
  }

  function keyStatus(e, now = Date.now()) {
    if (e.disabled === true) return "disabled";
    if (e.expires_at && Date.parse(e.expires_at) <= now) return "expired";
    if (e.not_before && Date.parse(e.not_before) > now) return "scheduled";
    return "active";
  }

  function kindOf(e) {
    let kind = !e.cors ? "backend" : e.cors.full_access ? "full access" : "CORS";
    if (e.rules) kind += " · rules";
    return kind;
  }

  // RFC 3339 as people read it; the column headers say UTC.
  const when = (t) => String(t).replace("T", " ").replace(/Z$/, "");

  function validity(e) {
    if (!e.not_before && !e.expires_at) return el("span", { class: "muted", text: "no limit" });
    const lines = el("span", { class: "validity" });
    if (e.not_before) lines.append(el("span", { text: `from ${when(e.not_before)}` }));
    if (e.expires_at) lines.append(el("span", { text: `until ${when(e.expires_at)}` }));
    return lines;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    node.append(...children);
    return node;
  }

  function tags(list, empty) {
    if (!list || list.length === 0) return el("span", { class: "muted", text: empty });
    return el("span", { class: "tags" }, ...list.map((t) => el("span", { class: "tag", text: t })));
  }

  function cell(label, content, cls) {
    const td = el("td", { "data-label": label });
    if (cls) td.className = cls;
    td.append(content);
    return td;
  }

  function actionButton(action, text, id, cls = "small") {
    return el("button", { type: "button", class: cls, "data-action": action, "data-id": id,
      "aria-label": `${text} key ${id}`, text });
  }

  // ---- Limits: one per line, `100/minute` or `name=100/minute` ---------------------------

  const LIMIT_LINE = /^(?:([A-Za-z0-9._-]{1,64})=)?([1-9][0-9]{0,12})\/(second|minute|hour|day)$/;

  function limitText(l) {
    return `${l.name ? `${l.name}=` : ""}${l.requests}/${l.per}`;
  }

  // The lines as the API's JSON list, and the problems seen here (`at` names the list).
  function readLimits(text, at) {
    const limits = [];
    const problems = [];
    text.split("\n").map((line) => line.trim()).filter(Boolean).forEach((line, i) => {
      const m = LIMIT_LINE.exec(line);
      if (!m) {
        problems.push([`${at}[${i}]`, `"${line}": expected REQUESTS/PER or NAME=REQUESTS/PER`]);
        return;
      }
      const limit = { requests: Number(m[2]), per: m[3] };
      if (m[1]) limit.name = m[1];
      limits.push(limit);
    });
    return { limits, problems };
  }

  function keyRow(e, leaked) {
    const st = keyStatus(e);
    const statusCell = el("span", {}, el("span", { class: `pill ${st}`, text: st }));
    if (leaked.has(e.id)) statusCell.append(el("span", { class: "pill leaked", text: "leaked" }));
    const actions = el("td", { class: "actions-cell", "data-label": "Actions" },
      e.disabled === true ? actionButton("enable", "Enable", e.id) : actionButton("disable", "Disable", e.id),
      actionButton("edit", "Edit", e.id),
      actionButton("rotate", "Rotate", e.id),
      actionButton("delete", "Delete", e.id, "small danger-text"));
    return el("tr", { "data-id": e.id, "data-status": st },
      cell("ID", e.id, "id"),
      cell("Name", e.name || "—"),
      cell("Owner", e.owner || "—"),
      cell("Kind", el("span", { class: "pill kind", text: kindOf(e) })),
      cell("Origins", e.cors ? tags(e.cors.allowed_origins, "none") : el("span", { class: "muted", text: "—" })),
      cell("Resources", tags(e.resources, "any")),
      cell("Limits", tags((e.limits || []).map(limitText), "none")),
      cell("Status", statusCell),
      cell("Validity (UTC)", validity(e)),
      cell("Last used (UTC)", e.last_used_at ? when(e.last_used_at) : el("span", { class: "muted", text: "never" }), "last-used"),
      actions);
  }

  async function loadKeys() {
    const params = new URLSearchParams({ limit: String(state.limit) });
    if (state.owner) params.set("owner", state.owner);
    if (state.unusedDays) {
      const since = new Date(Date.now() - Number(state.unusedDays) * 86400000);
      params.set("unused_since", since.toISOString().replace(/\.\d{3}Z$/, "Z"));
    }
    const after = state.cursors[state.page];
    if (after) params.set("after", after);
    // Paging waits for the page on its way; an answer overtaken by a newer call is dropped.
    const mine = ++state.keysCall;
    state.next = null;
    $("prev-page").disabled = true;
    $("next-page").disabled = true;
    $("key-table").setAttribute("aria-busy", "true");
    let data;
    try {
      data = await api("GET", `/v1/keys?${params}`);
    } catch (err) {
      if (mine !== state.keysCall) return;
      $("prev-page").disabled = state.page === 0;
      if (!unauthorized(err)) status($("keys-status"), `Could not load the keys: ${describe(err)}`, true);
      return;
    } finally {
      if (mine === state.keysCall) $("key-table").removeAttribute("aria-busy");
    }
    if (mine !== state.keysCall) return;
    if (data.entries.length === 0 && state.page > 0) {
      // The last key of a later page went away: show the page before.
      state.page -= 1;
      return loadKeys();
    }
    state.next = data.next;
    state.entries = new Map(data.entries.map((e) => [e.id, e]));
    const leaked = new Set(data.leaked || []);
    const rows = data.entries.map((e) => keyRow(e, leaked));
    if (rows.length === 0) {
      const text = state.unusedDays ? `No keys unused for ${state.unusedDays} days.`
        : state.owner ? `No keys with owner “${state.owner}”.` : "No keys yet: create one.";
      rows.push(el("tr", {}, el("td", { class: "empty", colspan: "11", text })));
    }
    $("key-rows").replaceChildren(...rows);
    const first = state.page * state.limit + 1;
    $("page-info").textContent = data.entries.length
      ? `Page ${state.page + 1} · keys ${first}–${first + data.entries.length - 1}${state.next ? "" : " (last page)"}`
      : "";
    $("prev-page").disabled = state.page === 0;
    $("next-page").disabled = !state.next;
    if ($("keys-status").classList.contains("bad")) status($("keys-status"), "");
  }

  function onFilter(event) {
    event.preventDefault();
    state.owner = $("owner-filter").value.trim();
    state.unusedDays = $("unused-filter").value;
    state.limit = Number($("page-size").value) || 50;
    openKeys(true);
  }

  async function onRowAction(event) {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const id = button.dataset.id;
    const entry = state.entries.get(id);
    switch (button.dataset.action) {
      case "disable":
      case "enable": {
        const disable = button.dataset.action === "disable";
        button.disabled = true;
        try {
          await api("PATCH", keyPath(id), { disabled: disable ? true : null });
          status($("keys-status"), `${disable ? "Disabled" : "Enabled"} key ${id}.`);
        } catch (err) {
          if (!unauthorized(err)) status($("keys-status"), `Could not change ${id}: ${describe(err)}`, true);
        }
        await loadKeys();
        const again = document.querySelector(`#key-rows button[data-id="${CSS.escape(id)}"][data-action="${disable ? "enable" : "disable"}"]`);
        if (again) again.focus();
        break;
      }
      case "edit":
        if (entry) openKeyDialog(entry);
        break;
      case "rotate":
        openRotate(id);
        break;
      case "delete":
        openDelete(id);
        break;
    }
  }

  // ---- Create and edit -----------------------------------------------------------------

  // The filter's origin rule (keygate::core::cors::normalize_origin), to answer at once.
  function originProblem(raw) {
    const EXPECTED = "expected an origin scheme://host[:port] with scheme http or https, and no path";
    if (raw === "*") return null;
    const lower = raw.replace(/[A-Z]/g, (c) => c.toLowerCase());
    if (lower === "null") return "the null origin is shared by every sandboxed page and cannot be allowed";
    const sep = lower.indexOf("://");
    if (sep < 0) return EXPECTED;
    const scheme = lower.slice(0, sep);
    const authority = lower.slice(sep + 3);
    const defaultPort = { http: "80", https: "443" }[scheme];
    if (!defaultPort) return EXPECTED;
    if (authority === "" || /[/?#@\\]/.test(authority)) return EXPECTED;
    let host = authority;
    let port = null;
    const colon = authority.lastIndexOf(":");
    if (colon >= 0 && !authority.slice(colon).includes("]")) {
      host = authority.slice(0, colon);
      port = authority.slice(colon + 1);
    }
    const v6 = host.startsWith("[") && host.endsWith("]") && host.length >= 2 ? host.slice(1, -1) : null;
    const hostOk = v6 !== null ? /^[0-9a-f:.]+$/.test(v6) : /^[a-z0-9.-]+$/.test(host);
    if (!hostOk) return EXPECTED;
    if (port !== null && port !== defaultPort && (!/^[1-9][0-9]{0,4}$/.test(port) || Number(port) > 65535)) {
      return "port must be a number from 1 to 65535";
    }
    return null;
  }

  let originSerial = 0;

  function addOrigin(value = "", focus = false) {
    originSerial += 1;
    const n = originSerial;
    const input = el("input", { id: `f-origin-${n}`, class: "origin", autocomplete: "off", spellcheck: "false",
      placeholder: "https://app.example", "aria-describedby": `err-origin-${n}` });
    input.value = value;
    const label = el("label", { for: `f-origin-${n}`, class: "sr-only" });
    const remove = el("button", { type: "button", class: "small quiet", "data-remove-origin": "", text: "Remove" });
    const error = el("p", { id: `err-origin-${n}`, class: "error" });
    const li = el("li", {}, label, input, remove, error);
    $("origin-list").append(li);
    numberOrigins();
    if (focus) input.focus();
    return input;
  }

  function numberOrigins() {
    $("origin-list").querySelectorAll("li").forEach((li, i) => {
      li.querySelector("label").textContent = `Origin ${i + 1}`;
      li.querySelector("button").setAttribute("aria-label", `Remove origin ${i + 1}`);
    });
  }

  function onOriginListClick(event) {
    const button = event.target.closest("button[data-remove-origin]");
    if (!button) return;
    const li = button.closest("li");
    const next = li.nextElementSibling || li.previousElementSibling;
    li.remove();
    numberOrigins();
    (next ? next.querySelector("input") : $("add-origin")).focus();
  }

  function syncCors() {
    const on = $("f-cors").checked;
    $("cors-fields").hidden = !on;
    if (on && $("origin-list").children.length === 0) addOrigin();
  }

  function clearErrors(form) {
    for (const p of form.querySelectorAll(".error")) p.textContent = "";
    for (const i of form.querySelectorAll("[aria-invalid]")) i.removeAttribute("aria-invalid");
  }

  const FIELDS = {
    id: ["f-id", "err-id"],
    name: ["f-name", "err-name"],
    owner: ["f-owner", "err-owner"],
    resources: ["f-resources", "err-resources"],
    limits: ["f-limits", "err-limits"],
    not_before: ["f-not-before", "err-not-before"],
    expires_at: ["f-expires", "err-expires"],
  };

  // Shows a message next to the field a JSON path names; returns the field, or null.
  function fieldError(path, message) {
    let input = null;
    let box = null;
    const origin = /^cors\.allowed_origins\[(\d+)\]/.exec(path || "");
    if (origin && state.sentOrigins[Number(origin[1])]) {
      input = state.sentOrigins[Number(origin[1])];
      box = $(input.getAttribute("aria-describedby"));
    } else if (path === "cors" || (path || "").startsWith("cors.allowed_origins")) {
      input = $("origin-list").querySelector("input") || $("f-cors");
      box = $("err-origins");
    } else if ((path || "").startsWith("cors.")) {
      input = $("f-full");
      box = $("err-full");
    } else {
      const head = (path || "").split(/[.[]/)[0];
      const known = FIELDS[head];
      if (known) {
        input = $(known[0]);
        box = $(known[1]);
      }
    }
    if (!box) {
      $("form-error").textContent = path ? `${path}: ${message}` : message;
      return null;
    }
    box.textContent = box.textContent ? `${box.textContent} ${message}` : message;
    input.setAttribute("aria-invalid", "true");
    return input;
  }

  function openKeyDialog(entry) {
    const form = $("key-form");
    form.reset();
    clearErrors(form);
    state.editing = entry || null;
    $("origin-list").replaceChildren();
    const editing = Boolean(entry);
    $("key-dialog-title").textContent = editing ? `Edit key ${entry.id}` : "Create key";
    $("key-submit").textContent = editing ? "Save changes" : "Create key";
    $("f-id").readOnly = editing;
    if (editing) {
      $("f-id").value = entry.id;
      $("f-name").value = entry.name || "";
      $("f-owner").value = entry.owner || "";
      $("f-cors").checked = Boolean(entry.cors);
      $("f-full").checked = Boolean(entry.cors && entry.cors.full_access);
      for (const o of (entry.cors && entry.cors.allowed_origins) || []) addOrigin(o);
      $("f-resources").value = (entry.resources || []).join("\n");
      $("f-limits").value = (entry.limits || []).map(limitText).join("\n");
      $("f-not-before").value = entry.not_before || "";
      $("f-expires").value = entry.expires_at || "";
    }
    syncCors();
    state.ownerLimits = "";
    if (editing && entry.owner) loadOwnerLimits(entry.owner);
    $("leak-record").hidden = true;
    $("leak-list").replaceChildren();
    $("usage-panel").hidden = true;
    $("usage-chart").replaceChildren();
    if (editing) {
      loadLeaks(entry.id);
      loadUsage(entry.id);
    }
    $("key-dialog").showModal();
    (editing ? $("f-name") : $("f-id")).focus();
  }

  // The form as an entry (create) or a merge patch (edit), and the problems seen here.
  function collect() {
    const editing = Boolean(state.editing);
    const doc = {};
    const problems = [];
    const text = (id) => $(id).value.trim();
    const optional = (field, value) => {
      if (value) doc[field] = value;
      else if (editing) doc[field] = null;
    };
    const id = text("f-id");
    if (!editing && id) {
      if (!/^[A-Za-z0-9._-]{1,64}$/.test(id)) problems.push(["id", "expected 1-64 of A-Z a-z 0-9 . _ -"]);
      doc.id = id;
    }
    optional("name", text("f-name"));
    optional("owner", text("f-owner"));
    state.sentOrigins = [];
    if ($("f-cors").checked) {
      const origins = [];
      for (const input of $("origin-list").querySelectorAll("input")) {
        const value = input.value.trim();
        if (!value) continue;
        const why = originProblem(value);
        const index = origins.length;
        if (why) problems.push([`cors.allowed_origins[${index}]`, why]);
        origins.push(value);
        state.sentOrigins.push(input);
      }
      if (origins.includes("*") && origins.length > 1) {
        problems.push(["cors.allowed_origins", "\"*\" must be the only entry when present"]);
      }
      doc.cors = { allowed_origins: origins, full_access: $("f-full").checked };
    } else if (editing) {
      doc.cors = null;
    }
    const resources = $("f-resources").value.split(/[\s,]+/).filter(Boolean);
    optional("resources", resources.length ? resources : null);
    const own = readLimits($("f-limits").value, "limits");
    problems.push(...own.problems);
    optional("limits", own.limits.length ? own.limits : null);
    optional("not_before", text("f-not-before"));
    optional("expires_at", text("f-expires"));
    return { doc, problems };
  }

  async function onKeySubmit(event) {
    event.preventDefault();
    const form = $("key-form");
    clearErrors(form);
    const { doc, problems } = collect();
    if (problems.length) {
      const fields = problems.map(([path, message]) => fieldError(path, message)).filter(Boolean);
      if (fields.length) fields[0].focus();
      return;
    }
    const editing = state.editing;
    // The owner's limits first: a key is never created twice because they were refused.
    if (!(await saveOwnerLimits($("f-owner").value.trim()))) return;
    $("key-submit").disabled = true;
    let answer;
    try {
      answer = editing ? await api("PATCH", keyPath(editing.id), doc) : await api("POST", "/v1/keys", doc);
    } catch (err) {
      if (unauthorized(err)) return;
      let field = null;
      if (err.status === 409) field = fieldError("id", err.message);
      else if (err.status === 400 && err.path !== undefined) field = fieldError(err.path, err.message);
      else $("form-error").textContent = describe(err);
      (field || $("form-error")).focus?.();
      return;
    } finally {
      $("key-submit").disabled = false;
    }
    $("key-dialog").close();
    if (editing) {
      status($("keys-status"), `Saved key ${editing.id}.`);
    } else {
      status($("keys-status"), `Created key ${answer.entry.id}.`);
      showSecret(answer.key, `For the new key ${answer.entry.id}${answer.entry.name ? ` (${answer.entry.name})` : ""}.`);
    }
    loadKeys();
  }

  // The owner's limits as the dialog opened with them, so that only a change is saved.
  // ---- Usage: a key's requests per hour over the last day, as stacked SVG bars -----------

  const SVG = "http://www.w3.org/2000/svg";

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    node.append(...children);
    return node;
  }

  // allowed, every denial, and the 503s, from one point's counts.
  function split(counts) {
    let denied = 0;
    for (const [k, v] of Object.entries(counts)) if (k.startsWith("denied_") || k === "preflight_denied") denied += v;
    return { allowed: counts.allowed || 0, denied, unavailable: counts.unavailable || 0 };
  }

  function usageChart(points) {
    const width = 480, height = 120, gap = 2;
    const parts = points.map((p) => split(p.counts));
    const top = Math.max(1, ...parts.map((x) => x.allowed + x.denied + x.unavailable));
    const bar = width / Math.max(1, points.length);
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", preserveAspectRatio: "none" });
    points.forEach((p, i) => {
      const x = parts[i];
      const total = x.allowed + x.denied + x.unavailable;
      const group = svg("g", { "data-at": p.at, "data-requests": total });
      group.append(svg("title", {}, `${when(p.at)} UTC: ${total} requests (${x.allowed} allowed, ${x.denied} denied, ${x.unavailable} unverified)`));
      let y = height;
      for (const kind of ["allowed", "denied", "unavailable"]) {
        if (!x[kind]) continue;
        const h = (x[kind] / top) * (height - 4);
        y -= h;
        group.append(svg("rect", { class: kind, x: i * bar + gap / 2, y, width: Math.max(1, bar - gap), height: h }));
      }
      chart.append(group);
    });
    return chart;
  }

  async function loadUsage(id) {
    let data;
    try {
      data = await api("GET", `${keyPath(id)}/usage?step=hour`);
    } catch (err) {
      unauthorized(err);
      return;
    }
    if (!state.editing || state.editing.id !== id) return;
    const points = data.points || [];
    const sum = points.reduce((acc, p) => {
      const x = split(p.counts);
      return { allowed: acc.allowed + x.allowed, denied: acc.denied + x.denied, unavailable: acc.unavailable + x.unavailable };
    }, { allowed: 0, denied: 0, unavailable: 0 });
    $("usage-chart").replaceChildren(usageChart(points));
    const legend = (kind, text) => [el("span", { class: `legend-swatch ${kind}` }), text];
    $("usage-summary").replaceChildren(
      ...legend("allowed", `${sum.allowed} allowed`), ...legend("denied", `${sum.denied} denied`),
      ...legend("unavailable", `${sum.unavailable} unverified`),
      data.last_used_at ? ` · last used ${when(data.last_used_at)} UTC` : " · never used");
    $("usage-panel").hidden = false;
  }

  // A key's leak reports, shown at the top of its dialog: when, by whom, where, what was done.
  async function loadLeaks(id) {
    let data;
    try {
      data = await api("GET", keyPath(id));
    } catch (err) {
      unauthorized(err);
      return;
    }
    if (!state.editing || state.editing.id !== id || !data.leaks) return;
    const done = { disabled: "disabled", expires: "end brought forward", none: "nothing more to do" };
    $("leak-list").replaceChildren(...data.leaks.map((l) =>
      el("li", {}, `${when(l.time)} UTC by `, el("code", { text: l.reporter }),
        ` (${done[l.action] || l.action}): `, el("span", { class: "leak-source", text: l.source }))));
    $("leak-record").hidden = false;
  }

  async function loadOwnerLimits(owner) {
    try {
      const answer = await api("GET", `/v1/owners/${encodeURIComponent(owner)}`);
      state.ownerLimits = answer.limits.map(limitText).join("\n");
    } catch (err) {
      if (unauthorized(err)) return;
      state.ownerLimits = "";
      if (err.status !== 404) $("err-owner-limits").textContent = describe(err);
    }
    $("f-owner-limits").value = state.ownerLimits;
  }

  // Saves the owner's limits when they changed; false (the dialog stays open) on a problem.
  async function saveOwnerLimits(owner) {
    const text = $("f-owner-limits").value.trim();
    if (text === state.ownerLimits.trim()) return true;
    const box = $("err-owner-limits");
    if (!owner) {
      box.textContent = "Give the key an owner first: these limits belong to the owner.";
      $("f-owner-limits").focus();
      return false;
    }
    const { limits, problems } = readLimits(text, "limits");
    if (problems.length) {
      box.textContent = problems.map(([, m]) => m).join(" ");
      $("f-owner-limits").focus();
      return false;
    }
    const path = `/v1/owners/${encodeURIComponent(owner)}`;
    try {
      if (limits.length) await api("PUT", path, { limits });
      else await api("DELETE", path);
    } catch (err) {
      if (unauthorized(err)) return false;
      if (!(err.status === 404 && !limits.length)) {
        box.textContent = err.path ? `${err.path}: ${err.message}` : describe(err);
        $("f-owner-limits").focus();
        return false;
      }
    }
    state.ownerLimits = text;
    return true;
  }

  // ---- The secret, once ----------------------------------------------------------------

  function showSecret(secret, about) {
    $("secret-for").textContent = about;
    $("secret-value").value = secret;
    $("copy-status").textContent = "";
    $("secret-dialog").showModal();
    $("secret-value").select();
    $("copy-secret").focus();
  }

  async function copySecret() {
    const input = $("secret-value");
    let copied = false;
    try {
      await navigator.clipboard.writeText(input.value);
      copied = true;
    } catch (e) {
      input.select();
      try {
        copied = document.execCommand("copy");
      } catch (e2) {
        copied = false;
      }
    }
    $("copy-status").textContent = copied
      ? "Copied to the clipboard."
      : "Copying was refused: the key is selected, press Ctrl+C (⌘C).";
    if (!copied) input.select();
  }

  // ---- Rotate and delete ---------------------------------------------------------------

  function openRotate(id) {
    state.target = id;
    clearErrors($("rotate-form"));
    $("rotate-title").textContent = `Rotate key ${id}`;
    $("rotate-dialog").showModal();
    $("f-grace").select();
    $("f-grace").focus();
  }

  async function onRotate(event) {
    event.preventDefault();
    const form = $("rotate-form");
    clearErrors(form);
    const raw = $("f-grace").value.trim();
    const grace = Number(raw);
    if (!/^\d+$/.test(raw) || grace > MAX_GRACE) {
      $("err-grace").textContent = "expected a whole number of seconds, 0 to 315360000";
      $("f-grace").setAttribute("aria-invalid", "true");
      $("f-grace").focus();
      return;
    }
    const id = state.target;
    $("rotate-submit").disabled = true;
    let answer;
    try {
      answer = await api("POST", `${keyPath(id)}/rotate`, { grace_seconds: grace });
    } catch (err) {
      if (unauthorized(err)) return;
      const box = err.path === "grace_seconds" ? $("err-grace") : $("rotate-error");
      box.textContent = err.path === "grace_seconds" ? err.message : describe(err);
      return;
    } finally {
      $("rotate-submit").disabled = false;
    }
    $("rotate-dialog").close();
    status($("keys-status"), `Rotated key ${id}: its successor is ${answer.entry.id}.`);
    showSecret(answer.key, `For ${answer.entry.id}, the successor of ${id}. ${id} keeps working for ${grace} s.`);
    loadKeys();
  }

  function openDelete(id) {
    state.target = id;
    $("delete-error").textContent = "";
    $("delete-id").textContent = id;
    $("delete-title").textContent = `Delete key ${id}`;
    $("delete-dialog").showModal();
    $("delete-dialog").querySelector("[data-close]").focus();
  }

  async function onDelete(event) {
    event.preventDefault();
    const id = state.target;
    $("delete-confirm").disabled = true;
    try {
      await api("DELETE", keyPath(id));
    } catch (err) {
      if (!unauthorized(err)) $("delete-error").textContent = describe(err);
      return;
    } finally {
      $("delete-confirm").disabled = false;
    }
    $("delete-dialog").close();
    status($("keys-status"), `Deleted key ${id}.`);
    loadKeys();
  }

  // ---- The audit log -------------------------------------------------------------------

  async function loadAudit(reset) {
    const params = new URLSearchParams({ limit: "50" });
    if (!reset && state.auditNext) params.set("after", state.auditNext);
    const mine = ++state.auditCall;
    $("audit-more").hidden = true;
    $("audit-table").setAttribute("aria-busy", "true");
    let data;
    try {
      data = await api("GET", `/v1/audit?${params}`);
    } catch (err) {
      if (mine === state.auditCall && !unauthorized(err)) {
        status($("audit-status"), `Could not load the audit log: ${describe(err)}`, true);
      }
      return;
    } finally {
      if (mine === state.auditCall) $("audit-table").removeAttribute("aria-busy");
    }
    if (mine !== state.auditCall) return;
    const rows = data.entries.map((r) =>
      el("tr", { "data-seq": String(r.seq), "data-action": r.action, "data-key": r.key_id },
        cell("#", String(r.seq)),
        cell("Time (UTC)", when(r.time)),
        cell("Admin", el("code", { text: r.admin })),
        cell("Action", r.action),
        cell("Key", r.key_id, "id"),
        cell("Successor or source", r.successor || r.source || "—", "id")));
    if (reset) $("audit-rows").replaceChildren(...rows);
    else $("audit-rows").append(...rows);
    if (reset && rows.length === 0) {
      $("audit-rows").append(el("tr", {}, el("td", { class: "empty", colspan: "6", text: "No changes yet." })));
    }
    state.auditNext = data.next;
    $("audit-more").hidden = !data.next;
    status($("audit-status"), "");
  }

  // ---- Wiring --------------------------------------------------------------------------

  function start() {
    $("signin-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", () => signOut("Signed out."));
    $("tab-keys").addEventListener("click", () => openKeys(false));
    $("tab-audit").addEventListener("click", openAudit);
    $("filter-form").addEventListener("submit", onFilter);
    $("refresh").addEventListener("click", () => loadKeys());
    $("prev-page").addEventListener("click", () => {
      state.page = Math.max(0, state.page - 1);
      loadKeys();
    });
    $("next-page").addEventListener("click", () => {
      if (!state.next) return;
      state.cursors[state.page + 1] = state.next;
      state.page += 1;
      loadKeys();
    });
    $("key-rows").addEventListener("click", onRowAction);
    $("new-key").addEventListener("click", () => openKeyDialog(null));
    $("f-cors").addEventListener("change", syncCors);
    $("add-origin").addEventListener("click", () => addOrigin("", true));
    $("origin-list").addEventListener("click", onOriginListClick);
    $("key-form").addEventListener("submit", onKeySubmit);
    $("copy-secret").addEventListener("click", copySecret);
    $("secret-done").addEventListener("click", () => $("secret-dialog").close());
    // The secret is gone once its dialog closes, however it closes.
    $("secret-dialog").addEventListener("close", () => {
      $("secret-value").value = "";
      $("new-key").focus();
    });
    $("rotate-form").addEventListener("submit", onRotate);
    $("delete-form").addEventListener("submit", onDelete);
    $("audit-refresh").addEventListener("click", () => loadAudit(true));
    $("audit-more").addEventListener("click", () => loadAudit(false));
    for (const b of document.querySelectorAll("[data-close]")) {
      b.addEventListener("click", () => b.closest("dialog").close());
    }
    state.token = sessionStorage.getItem(TOKEN_KEY);
    if (state.token) {
      openKeys(true);
    } else {
      show("signin");
      $("token").focus();
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
