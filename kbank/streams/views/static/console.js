// kbank console: reads the views workers' HTTP API only (see kbank/streams/views/console.py).
"use strict";

const POLL_MS = 1500;           // the overview refreshes itself this often
const FETCH_TIMEOUT_MS = 4000;  // a worker that does not answer is reported, not waited for
const CHART_SPAN_MS = 5 * 60 * 1000;
const PAGE_SIZE = 20;

const $ = (id) => document.getElementById(id);

// -- formatting ------------------------------------------------------------
// amounts are integers in minor units; `decimals` comes from the server's currency catalogue
function money(minor, decimals = 2) {
  if (minor === null || minor === undefined) return "–";
  const sign = minor < 0 ? "-" : "";
  const abs = Math.abs(minor), unit = 10 ** decimals;
  const major = Math.floor(abs / unit).toLocaleString("en-US");
  return decimals ? `${sign}${major}.${String(abs % unit).padStart(decimals, "0")}` : `${sign}${major}`;
}
function toMinor(text) {
  const m = /^\s*(\d+)(?:\.(\d{1,2}))?\s*$/.exec(text);
  if (!m) return null;
  return Number(m[1]) * 100 + Number((m[2] || "").padEnd(2, "0"));
}
const ms = (v) => (v === null || v === undefined ? "–" : `${v} ms`);
const when = (ts) => (ts ? new Date(ts).toISOString().replace("T", " ").replace(/\.\d+Z$/, "") : "–");
function cell(row, text, href) {
  const td = row.insertCell();
  if (href) {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    td.appendChild(a);
  } else {
    td.textContent = text;
  }
  return td;
}

// -- the API ---------------------------------------------------------------
// the API key: this tab's sessionStorage, sent as a header (a cookie would ride along on
// another site's requests); any 401 signs the console out
const KEY_ITEM = "kbank.apiKey";
const apiKey = () => sessionStorage.getItem(KEY_ITEM);

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.reason ? body.reason : `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}
async function api(path, options = {}) {
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), FETCH_TIMEOUT_MS + (options.extraMs || 0));
  let resp;
  try {
    const headers = { ...(options.headers || {}) };
    if (apiKey()) headers.Authorization = `Bearer ${apiKey()}`;
    resp = await fetch(path, { ...options, headers, signal: ctrl.signal });
  } catch (err) {
    throw new ApiError(0, { reason: err.name === "AbortError"
      ? "the views worker did not answer in time" : "the views worker cannot be reached" });
  } finally {
    clearTimeout(timer);
  }
  let body = null;
  try { body = await resp.json(); } catch (_) { body = null; }
  if (resp.status === 401) signOut(`Signed out: ${(body && body.reason) || "the key no longer works"}.`);
  if (!resp.ok && resp.status !== 202) throw new ApiError(resp.status, body);
  return body;
}

// -- signing in and out ----------------------------------------------------
function showSession() {
  const key = apiKey();
  $("signin").hidden = !!key;
  for (const id of ["main", "nav", "session"]) $(id).hidden = !key;
  const m = key ? /^bk_([0-9a-f]{16})_/.exec(key) : null;
  $("signed-in-as").textContent = m ? `API key ${m[1]}` : "";
}
function signOut(message) {
  sessionStorage.removeItem(KEY_ITEM);
  $("signin-error").hidden = !message;
  $("signin-error").textContent = message || "";
  showSession();
}
$("signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY_ITEM, $("signin-key").value.trim());
  $("signin-key").value = "";
  try {
    await api("/stats");            // what an operator's or an auditor's key may read, cheaply
  } catch (err) {
    if (err.status === 401) return;  // api() signed out, with the server's reason
    if (err.status === 403) {
      signOut(`This console needs an operator or auditor key: ${err.message}`);
      return;
    }
    // anything else (503 while partitions move, a slow worker) did not refuse the key
  }
  $("signin-error").hidden = true;
  showSession();
  route();
  refreshOverview();
});
$("signout").addEventListener("click", () => signOut("Signed out."));
const enc = encodeURIComponent;
// the console's link to a request: its account and its id, each encoded on its own
const transferLink = (rid, account) => account ? `#/transfer/${enc(account)}/${enc(rid)}` : `#/transfer/${enc(rid)}`;

// -- pages -----------------------------------------------------------------
const pages = ["overview", "account", "transfer", "new"];
function route() {
  // each part is encoded on its own (encodeURIComponent encodes "/" and "@"), so an id or
  // an account holding either cannot name another request
  const [, page = "", arg = "", second = ""] = location.hash.split("/");
  const name = { "": "overview", account: "account", transfer: "transfer", new: "new" }[page] || "overview";
  for (const p of pages) $(`page-${p}`).hidden = p !== name;
  document.querySelectorAll("nav a").forEach((a) => {
    if (a.dataset.page === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  });
  const decoded = decodeURIComponent(arg);
  if (name === "account" && decoded) { $("account-id").value = decoded; showAccount(decoded); }
  if (name === "transfer" && decoded) {
    const sender = second ? decoded : "", rid = second ? decodeURIComponent(second) : decoded;
    $("transfer-id").value = rid;
    $("transfer-account").value = sender;
    showTransfer(rid, sender);
  }
}
window.addEventListener("hashchange", route);

// -- overview ----------------------------------------------------------------
const samples = [];   // {t, completed, rejected}
function banner(text) {
  $("banner").hidden = !text;
  $("banner").textContent = text || "";
}
function rate(key) {
  if (samples.length < 2) return null;
  const a = samples[Math.max(0, samples.length - 4)], b = samples[samples.length - 1];
  return (b[key] - a[key]) / ((b.t - a.t) / 1000);
}
async function refreshOverview() {
  let o;
  try {
    o = await api("/overview");
  } catch (err) {
    banner(`Views worker not answering: ${err.message}. Retrying every ${POLL_MS / 1000} s.`);
    $("overview-updated").textContent = `Last attempt failed at ${when(Date.now())}`;
    return;
  }
  const down = o.workers.filter((w) => !w.ok);
  banner(down.length ? down.map((w) => `Views worker ${w.url} is not answering (${w.reason}).`).join(" ")
    : (o.stats ? "" : `Only ${o.partitions_answered} of ${o.partitions} partitions answered: a views worker is missing or the partitions are moving.`));
  $("overview-updated").textContent = `Updated ${when(o.ts)} UTC`;
  if (o.stats) {
    const s = o.stats;
    samples.push({ t: o.ts, completed: s.transfers_completed, rejected: s.transfers_rejected });
    while (samples.length && samples[0].t < o.ts - CHART_SPAN_MS) samples.shift();
    const rc = rate("completed"), rr = rate("rejected");
    $("rate-completed").textContent = rc === null ? "–" : rc.toFixed(1);
    $("rate-rejected").textContent = rr === null ? "–" : rr.toFixed(1);
    $("in-flight").textContent = money(s.money_in_flight);
    $("held").textContent = money(s.money_held);
    $("accounts").textContent = s.accounts.toLocaleString("en-US");
    $("totals").textContent = `${s.transfers_completed.toLocaleString("en-US")} / ${s.transfers_rejected.toLocaleString("en-US")}`;
    const c = o.conservation;
    $("conservation").textContent = c.ok ? "Yes" : "NO";
    $("conservation-card").className = `card ${c.ok ? "ok" : "bad"}`;
    $("conservation-detail").textContent = Object.entries(c.currencies).map(([cur, m]) =>
      `${cur}: balances + in flight ${money(m.balances_plus_in_flight, m.decimals)}; deposits − withdrawals ${money(m.deposits_minus_withdrawals, m.decimals)}`
    ).join(" · ") || "no money yet";
  }
  showBooks(o.books);
  const li = o.latency.initiation, lc = o.latency.completion;
  $("lat-initiation").textContent = `${ms(li.p50_ms)} / ${ms(li.p99_ms)}`;
  $("lat-completion").textContent = `${ms(lc.p50_ms)} / ${ms(lc.p99_ms)}`;
  const p = o.engine_progress || {engine: "unknown"};
  $("engine-state").textContent = {ok: "Progressing", stalled: "STALLED", unknown: "Unknown"}[p.engine] || p.engine;
  $("engine-card").className = `card ${p.engine === "stalled" ? "bad" : p.engine === "ok" ? "ok" : ""}`;
  $("engine-detail").textContent = p.engine === "stalled"
    ? `partitions ${p.stall.partitions.join(", ")} since ${new Date(p.stall.since).toISOString()}: ${p.stall.cause}`
    : (p.reason || "");
  const eng = $("engine-lag").tBodies[0];
  eng.replaceChildren();
  for (const r of o.engine_lag || []) {
    const row = eng.insertRow();
    cell(row, r.partition); cell(row, r.requests); cell(row, r.credits);
  }
  if (!o.engine_lag) cell(eng.insertRow(), `unavailable: ${o.engine_lag_reason}`).colSpan = 3;
  const views = $("views-lag").tBodies[0];
  views.replaceChildren();
  for (const r of o.views_lag) {
    const row = views.insertRow();
    cell(row, r.worker); cell(row, r.topic); cell(row, r.partition); cell(row, r.lag);
  }
  $("workers").replaceChildren(...o.workers.map((w) => {
    const item = document.createElement("li");
    item.textContent = `${w.worker || "?"} at ${w.url}: ${w.ok ? "answering" : `NOT answering (${w.reason})`}`;
    item.className = w.ok ? "ok" : "bad";
    return item;
  }));
  drawChart();
}
function showBooks(b) {
  const close = b.last_close;
  $("last-close").textContent = b.closes === null ? "–" : close ? close.id : "None yet";
  $("close-card").className = `card ${close ? (Object.values(close.currencies).every((m) => m.conserved) ? "ok" : "bad") : ""}`;
  $("close-detail").textContent = close
    ? `${close.accounts.toLocaleString("en-US")} accounts, ${close.in_flight_transfers} transfers in flight; ${b.closes} close(s) in all`
    : "bank close --at TIME";
  $("breaks").textContent = b.breaks === null ? "–" : b.breaks.toLocaleString("en-US");
  $("breaks-card").className = `card ${b.breaks === null ? "" : b.breaks ? "bad" : "ok"}`;
  $("breaks-detail").textContent = Object.entries(b.accounts_with_breaks || {})
    .map(([account, n]) => `${account}: ${n}`).join(" · ");
}

function drawChart() {
  const canvas = $("chart"), ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const points = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1], b = samples[i];
    points.push({ t: b.t, v: (b.completed - a.completed) / ((b.t - a.t) / 1000) });
  }
  const max = Math.max(1, ...points.map((p) => p.v));
  const now = samples.length ? samples[samples.length - 1].t : Date.now();
  ctx.strokeStyle = "#888"; ctx.strokeRect(0.5, 0.5, w - 1, h - 1);
  ctx.fillStyle = "#333"; ctx.font = "12px sans-serif";
  ctx.fillText(`${max.toFixed(0)}/s`, 6, 14);
  ctx.strokeStyle = "#1f5fbf"; ctx.lineWidth = 2; ctx.beginPath();
  points.forEach((p, i) => {
    const x = w - ((now - p.t) / CHART_SPAN_MS) * w, y = h - 4 - (p.v / max) * (h - 24);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
}

// -- account -------------------------------------------------------------------
let history = { account: null, stack: [], before: null, next: null };
function showError(id, text) {
  $(id).hidden = !text;
  $(id).textContent = text || "";
}
async function showAccount(account) {
  showError("account-error", "");
  let view;
  try {
    view = await api(`/accounts/${enc(account)}?timeout=0`);
  } catch (err) {
    $("account-body").hidden = true;
    showError("account-error", err.status === 404 ? `No account "${account}".` : `Cannot show "${account}": ${err.message}`);
    return;
  }
  $("account-body").hidden = false;
  const d = view.decimals;
  $("acct-balance").textContent = money(view.balance, d);
  $("acct-currency").textContent = view.currency;
  $("acct-state").textContent = view.state;
  $("acct-seq").textContent = view.seq;
  const l = view.limits;
  $("acct-limit").textContent = l.daily_limit === null ? "none" : money(l.daily_limit, d);
  $("acct-outflow").textContent = `${money(l.outflow, d)}${l.remaining === null ? "" : ` (remaining ${money(l.remaining, d)})`}`;
  $("acct-overdraft").textContent = l.overdraft_limit ? money(l.overdraft_limit, d) : "none";
  $("acct-max").textContent = l.max_balance === null ? "none" : money(l.max_balance, d);
  const meta = Object.entries(view.metadata || {});
  $("acct-metadata").textContent = meta.length ? meta.map(([k, v]) => `${k}=${v}`).join(", ") : "none";
  history.decimals = d;
  $("asof-result").textContent = "";
  history = { account, stack: [], before: null, next: null, decimals: d };
  await loadHistory(null);
}
async function loadHistory(before) {
  const a = history.account;
  const page = await api(`/accounts/${enc(a)}/history?timeout=0&limit=${PAGE_SIZE}${before ? `&before_seq=${before}` : ""}`)
    .catch((err) => { showError("account-error", `History unavailable: ${err.message}`); return null; });
  if (!page) return;
  history.before = before;
  history.next = page.next_before_seq;
  const body = $("history").tBodies[0];
  body.replaceChildren();
  page.entries.forEach((e, i) => {
    const pos = page.positions ? page.positions[i] : null;
    const row = body.insertRow();
    const d = history.decimals;
    cell(row, e.seq); cell(row, e.kind + (e.reason ? ` (${e.reason})` : "")); cell(row, money(e.amount, d));
    if (e.counterparty) cell(row, e.counterparty, `#/account/${enc(e.counterparty)}`); else cell(row, "");
    cell(row, money(e.balance, d)); cell(row, when(e.ts));
    cell(row, Object.entries(e.metadata || {}).map(([k, v]) => `${k}=${v}`).join(", "));
    cell(row, e.request_id, transferLink(e.request_id, a));
    cell(row, pos && pos.offset !== null ? `ledger.events p${pos.partition} @${pos.offset}` : "–");
  });
  const first = page.entries.length ? page.entries[0].seq : 0;
  const last = page.entries.length ? page.entries[page.entries.length - 1].seq : 0;
  $("history-page").textContent = page.entries.length ? `seq ${first} to ${last} of ${page.seq}` : "no entries";
  $("history-older").disabled = !history.next;
  $("history-newer").disabled = history.stack.length === 0;
}
$("history-older").addEventListener("click", () => {
  if (!history.next) return;
  history.stack.push(history.before);
  loadHistory(history.next);
});
$("history-newer").addEventListener("click", () => {
  if (!history.stack.length) return;
  loadHistory(history.stack.pop());
});
$("account-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  location.hash = `#/account/${enc($("account-id").value.trim())}`;
});
async function balanceAsOf(account, seq, time) {
  // newest first: the first entry at or before the chosen seq or time holds the balance then
  let before = seq ? seq + 1 : null;
  for (let pages = 0; pages < 50; pages++) {
    const page = await api(`/accounts/${enc(account)}/history?timeout=0&limit=200${before ? `&before_seq=${before}` : ""}`);
    const hit = page.entries.find((e) => (seq ? e.seq <= seq : e.ts <= time));
    if (hit) return hit;
    if (!page.next_before_seq) return null;
    before = page.next_before_seq;
  }
  return null;
}
$("asof-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const seq = Number($("asof-seq").value) || null;
  const t = $("asof-time").value ? Date.parse(`${$("asof-time").value}Z`) : null;
  if (!seq && !t) { $("asof-result").textContent = "Give a seq or a time."; return; }
  try {
    const e = await balanceAsOf(history.account, seq, t);
    $("asof-result").textContent = e
      ? `Balance ${money(e.balance)} after seq ${e.seq} (${when(e.ts)} UTC)`
      : "The account did not exist yet.";
  } catch (err) {
    $("asof-result").textContent = `Cannot tell: ${err.message}`;
  }
});

// -- transfer ------------------------------------------------------------------
const LIFECYCLE = ["accepted", "debited", "completed"];
async function eventsOf(account, requestId) {
  // the account's history, newest first, up to a few pages: the entries of this request
  const found = [];
  let before = null;
  for (let pages = 0; pages < 5; pages++) {
    const page = await api(`/accounts/${enc(account)}/history?timeout=0&limit=200${before ? `&before_seq=${before}` : ""}`);
    page.entries.forEach((e, i) => { if (e.request_id === requestId) found.push({ e, pos: page.positions[i] }); });
    if (found.length || !page.next_before_seq) break;
    before = page.next_before_seq;
  }
  return found;
}
async function showTransfer(requestId, sender) {
  showError("transfer-error", "");
  let st;
  try {
    st = await api(`/transfers/${enc(requestId)}?account=${enc(sender || "")}`);
  } catch (err) {
    $("transfer-body").hidden = true;
    showError("transfer-error", err.status === 404 ? `No outcome for request "${requestId}" (yet).` : `Cannot show "${requestId}": ${err.message}`);
    return;
  }
  $("transfer-body").hidden = false;
  const reached = st.status === "rejected" ? -1 : LIFECYCLE.indexOf(st.status);
  $("lifecycle").replaceChildren(...[...LIFECYCLE.slice(0, 2), st.status === "rejected" ? "rejected" : "completed"].map((s, i) => {
    const li = document.createElement("li");
    const done = st.status === "rejected" ? (s === "rejected" || i === 0) : i <= reached;
    li.textContent = s;
    li.className = done ? (s === "rejected" ? "bad" : "done") : "todo";
    return li;
  }));
  $("transfer-status").textContent = `Status: ${st.status}${st.reason ? `, reason: ${st.reason}` : ""}${st.detail ? ` (${st.detail})` : ""}, at ${when(st.ts)} UTC (the request's timestamp)`;
  const body = $("transfer-events").tBodies[0];
  body.replaceChildren();
  if (!sender) {
    $("transfer-events-note").textContent = "Give the sender's account to show the ledger events on both sides.";
    return;
  }
  const rows = await eventsOf(sender, requestId).catch(() => []);
  const other = rows.map((r) => r.e.counterparty).find((c) => c);
  if (other) rows.push(...(await eventsOf(other, requestId).catch(() => [])));
  for (const { e, pos } of rows) {
    const row = body.insertRow();
    cell(row, e.account, `#/account/${enc(e.account)}`); cell(row, e.seq); cell(row, e.kind);
    cell(row, money(e.amount)); cell(row, money(e.balance)); cell(row, when(e.ts));
    cell(row, pos && pos.offset !== null ? `ledger.events p${pos.partition} @${pos.offset}` : "–");
  }
  $("transfer-events-note").textContent = rows.length ? "" : `No ledger event of this request in ${sender}'s recent history.`;
}
$("transfer-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const rid = $("transfer-id").value.trim(), sender = $("transfer-account").value.trim();
  location.hash = transferLink(rid, sender);
});

// -- new transfer -------------------------------------------------------------
const FIELDS = ["from", "to", "amount", "request_id"];
function fieldError(name, text) {
  const el = $(`new-${name}-error`), input = $(`new-${name.replace("_", "-")}`);
  el.hidden = !text;
  el.textContent = text || "";
  if (text) input.setAttribute("aria-invalid", "true"); else input.removeAttribute("aria-invalid");
  if (text) input.setAttribute("aria-describedby", el.id);
}
function newRequestId() {
  return `console-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}
$("new-request-id").value = newRequestId();
$("new-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  FIELDS.forEach((f) => fieldError(f, ""));
  const from = $("new-from").value.trim(), to = $("new-to").value.trim();
  const amount = toMinor($("new-amount").value);
  const requestId = $("new-request-id").value.trim() || newRequestId();
  let bad = false;
  if (!from) { fieldError("from", "Enter the sending account."); bad = true; }
  if (!to) { fieldError("to", "Enter the receiving account."); bad = true; }
  if (amount === null) { fieldError("amount", "Enter an amount such as 12.50 (at most two decimals)."); bad = true; }
  if (bad) return;
  $("new-result").textContent = "Sending…";
  try {
    let out = await api("/transfers?wait=completed&timeout=10", {
      method: "POST", headers: { "Content-Type": "application/json" }, extraMs: 10000,
      body: JSON.stringify({ request_id: requestId, from, to, amount }),
    });
    for (let i = 0; i < 20 && !["completed", "rejected"].includes(out.status); i++) {
      await new Promise((r) => setTimeout(r, 500));
      out = await api(`/transfers/${enc(requestId)}?account=${enc(from)}`).catch(() => out);
    }
    const link = transferLink(requestId, from);
    $("new-result").innerHTML = "";
    $("new-result").append(`Transfer ${requestId}: ${out.status}${out.reason ? ` (${out.reason})` : ""}. `);
    const a = document.createElement("a");
    a.href = link; a.textContent = "Show it";
    $("new-result").append(a);
    $("new-request-id").value = newRequestId();
  } catch (err) {
    const reason = err.message;
    const field = FIELDS.find((f) => new RegExp(`\\b${f}\\b`).test(reason)) || null;
    if (field) fieldError(field, reason);
    $("new-result").textContent = `Refused: ${reason}`;
  }
});

showSession();
if (apiKey()) { route(); refreshOverview(); }
setInterval(() => { if (apiKey() && !$("page-overview").hidden) refreshOverview(); }, POLL_MS);
