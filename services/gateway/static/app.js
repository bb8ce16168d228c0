// The observer page: sign in with an API token, follow a night's files over the gateway's WebSocket
// (services/gateway/PROTOCOL.md), download them, and manage a program's members. No framework, no build step.

const TOKEN_KEY = "skyport.token";
const DEFAULT_HEARTBEAT_S = 15;
const MAX_RETRY_DELAY_S = 30;
// An <a download> gives no signal when the browser has finished a file, so the queue spaces the starts:
// one file is handed to the browser at a time, and a burst of arrivals does not become a burst of requests.
const DOWNLOAD_SPACING_MS = 750;
const STATES = { new: "New", reprocessed: "Reprocessed", public: "Public" };
const RAW_PRODUCTS = new Set(["raw", "uncal"]);

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// --- state ------------------------------------------------------------------------------------------------

const session = {
  token: null,
  me: null, // the body of GET /v1/me
  programs: [], // [{mission, propid, role, title?}] from /v1/me, then from the stream's hello and programs
};

const table = {
  files: new Map(), // archive_id -> the latest file message's "file"
  rows: new Map(), // archive_id -> {file, tr}: a row is rebuilt only when its file changes
  sort: { column: "observed_at", descending: true },
  instruments: new Set(),
  levels: new Set(),
  renderPending: false,
};

const link = {
  generation: 0, // every attempt has its own; events of an older attempt are ignored
  socket: null,
  // The observing night of the sites (named by the local date it began on; the gateway and catalog decide):
  // null follows tonight, whose date the stream's hello names (tonight); a date is a night the user chose.
  night: null,
  tonight: null,
  elsewhere: new Map(), // a chosen night's page: night -> archive IDs of its live files of other nights
  cursor: null, // the cursor of the last message received for this night
  attempt: 0, // failed attempts since the stream was last live: sets the back-off
  heartbeat: DEFAULT_HEARTBEAT_S,
  resumed: false, // this attempt resumed from a cursor: its backlog is what was missed
  live: false,
  retryTimer: null,
  countdownTimer: null,
  watchdog: null,
};

const downloads = {
  queue: [], // [{archive_id, version, original_filename}]
  current: null,
  busy: false,
  seen: new Set(), // "archive_id@version" handed to the browser (or queued) in this tab
};

// --- HTTP -------------------------------------------------------------------------------------------------

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${session.token}`, Accept: "application/json" };
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "the gateway cannot be reached; check your network connection");
  }
  let data = null;
  if (response.status !== 204) {
    try {
      data = await response.json();
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const message = data && typeof data.error === "string" ? data.error : `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message);
  }
  return data;
}

async function newTicket() {
  const body = await api("POST", "/v1/tickets");
  if (!body || typeof body.ticket !== "string") throw new ApiError(502, "the gateway answered without a ticket");
  return body.ticket;
}

function programPath(mission, propid) {
  return `/v1/programs/${encodeURIComponent(mission)}/${encodeURIComponent(propid)}`;
}

// --- signing in and out -----------------------------------------------------------------------------------

async function signIn(token, { remembered }) {
  session.token = token;
  let me;
  try {
    me = await api("GET", "/v1/me");
  } catch (err) {
    session.token = null;
    if (err.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showSignIn(remembered ? "Your session has ended: sign in again." : `This token was refused: ${err.message}`);
    } else {
      showSignIn(`Cannot sign in: ${err.message}`);
    }
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  session.me = me;
  setPrograms(me.programs || []);
  showApp();
  connect();
}

function signOut(reason) {
  disconnect();
  session.token = null;
  session.me = null;
  session.programs = [];
  sessionStorage.removeItem(TOKEN_KEY);
  downloads.queue = [];
  downloads.seen.clear();
  clearFiles();
  link.cursor = null;
  $("member-rows").replaceChildren();
  setConnection("signed-out", "Signed out");
  showSignIn(reason || "");
}

function showSignIn(error) {
  $("app").hidden = true;
  $("whoami").hidden = true;
  $("signin").hidden = false;
  const box = $("signin-error");
  box.textContent = error || "";
  box.hidden = !error;
  $("token").focus();
}

function showApp() {
  $("signin").hidden = true;
  $("signin-error").hidden = true;
  $("app").hidden = false;
  $("whoami").hidden = false;
  $("user-name").textContent = session.me.display_name
    ? `${session.me.display_name} (${session.me.username})`
    : session.me.username;
  showView("files");
}

function setPrograms(programs) {
  session.programs = programs.map((p) => ({
    mission: p.mission,
    propid: p.propid,
    role: p.role ?? null,
    title: p.title ?? null,
  }));
  const list = $("program-list");
  list.replaceChildren(
    ...session.programs.map((p) => {
      const item = document.createElement("li");
      item.dataset.program = programKey(p);
      item.textContent = `${programKey(p)}${p.title ? `: ${p.title}` : ""} (${roleName(p.role)})`;
      return item;
    }),
  );
  const admin = session.me && session.me.is_admin ? " You are an administrator: you see every program." : "";
  $("profile-summary").textContent =
    (session.programs.length === 0
      ? "You are not a member of any program yet."
      : `You see the files of ${session.programs.length} program${session.programs.length === 1 ? "" : "s"}.`) + admin;
  fillSelect($("filter-program"), "All programs", session.programs.map((p) => [programKey(p), programKey(p)]));
  fillSelect(
    $("members-program"),
    null,
    session.programs.map((p) => [programKey(p), `${programKey(p)} (${roleName(p.role)})`]),
  );
  // Files of a program the user no longer belongs to go: nothing more of it arrives.
  const visible = new Set(session.programs.map(programKey));
  let removed = false;
  for (const [archiveId, file] of table.files) {
    if (!visible.has(programKey(file))) {
      table.files.delete(archiveId);
      table.rows.delete(archiveId);
      removed = true;
    }
  }
  if (removed) scheduleRender();
  if (!$("members-view").hidden) loadMembers();
}

function roleName(role) {
  return { pi: "PI", coi: "co-investigator", collaborator: "collaborator" }[role] || "administrator access";
}

function roleWithArticle(role) {
  return { pi: "the PI", coi: "a co-investigator", collaborator: "a collaborator" }[role] || role;
}

function programKey(p) {
  return `${p.mission}/${p.propid}`;
}

// --- the stream -------------------------------------------------------------------------------------------

function setConnection(kind, text) {
  const box = $("connection");
  box.dataset.state = kind;
  box.textContent = text;
}

function clearTimers() {
  clearTimeout(link.retryTimer);
  clearInterval(link.countdownTimer);
  clearTimeout(link.watchdog);
  link.retryTimer = link.countdownTimer = link.watchdog = null;
}

function closeSocket() {
  const socket = link.socket;
  link.socket = null;
  if (socket) {
    try {
      socket.close(1000, "client closes");
    } catch {
      // already closed
    }
  }
}

/** (Re)connect now, resuming from the last cursor if there is one. */
function connect() {
  const generation = ++link.generation;
  clearTimers();
  closeSocket();
  open(generation);
}

function disconnect() {
  ++link.generation;
  clearTimers();
  closeSocket();
}

function retryLater(reason) {
  const generation = ++link.generation;
  clearTimers();
  closeSocket();
  link.attempt += 1;
  const base = Math.min(MAX_RETRY_DELAY_S, 2 ** (link.attempt - 1));
  const delay = base * (0.8 + Math.random() * 0.4); // jitter, so that many pages do not come back at once
  const due = Date.now() + delay * 1000;
  const show = () => {
    const left = Math.max(1, Math.ceil((due - Date.now()) / 1000));
    setConnection("reconnecting", `Reconnecting in ${left} s${reason ? ` (${reason})` : ""}`);
  };
  show();
  link.countdownTimer = setInterval(show, 1000);
  link.retryTimer = setTimeout(() => {
    if (generation !== link.generation) return;
    clearInterval(link.countdownTimer);
    open(generation);
  }, delay * 1000);
}

function armWatchdog(generation) {
  clearTimeout(link.watchdog);
  // No message for three heartbeat periods: the connection is dead even if the socket has not noticed.
  link.watchdog = setTimeout(() => {
    if (generation === link.generation) retryLater("no heartbeat");
  }, link.heartbeat * 3000);
}

async function open(generation) {
  setConnection("connecting", "Connecting…");
  let ticket;
  try {
    ticket = await newTicket();
  } catch (err) {
    if (generation !== link.generation) return;
    if (err.status === 401) signOut(`Signed out: ${err.message}`);
    else retryLater(err.message);
    return;
  }
  if (generation !== link.generation) return;
  const params = new URLSearchParams({ ticket });
  if (link.night) params.set("night", link.night);
  if (link.cursor) params.set("cursor", link.cursor);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  let socket;
  try {
    socket = new WebSocket(`${scheme}//${location.host}/v1/stream?${params}`);
  } catch (err) {
    retryLater(String(err.message || err));
    return;
  }
  link.socket = socket;
  link.resumed = link.cursor !== null;
  link.live = false;
  link.heartbeat = DEFAULT_HEARTBEAT_S;
  armWatchdog(generation);
  socket.addEventListener("message", (event) => {
    if (generation !== link.generation) return;
    armWatchdog(generation);
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return; // not ours to understand; the protocol sends JSON objects only
    }
    if (message && typeof message === "object") receive(message);
  });
  socket.addEventListener("close", (event) => {
    if (generation !== link.generation) return;
    link.socket = null;
    if (event.code === 4001) {
      signOut("Your token was revoked: sign in again with a valid one.");
    } else if (event.code === 4008) {
      retryLater("the page fell behind");
    } else if (event.code === 1001) {
      retryLater("the gateway is restarting");
    } else {
      retryLater(link.live ? "connection lost" : "cannot connect");
    }
  });
}

function receive(message) {
  switch (message.type) {
    case "hello":
      if (Number.isFinite(message.heartbeat) && message.heartbeat > 0) {
        link.heartbeat = message.heartbeat;
        armWatchdog(link.generation);
      }
      if (Array.isArray(message.programs)) setPrograms(message.programs);
      if (!link.night && typeof message.night === "string") {
        link.tonight = message.night;
        $("night").value = message.night;
      }
      setConnection("connecting", link.resumed ? "Catching up…" : "Loading the night…");
      break;
    case "file":
      // A chosen night shows its own files only, as its backlog does after a reload; following tonight,
      // every change is news (a file of a night just begun, a reprocessed one).
      if (link.night && message.file && message.file.night !== link.night) {
        if (message.backlog === false) noteOtherNight(message.file);
        break;
      }
      if (message.file && typeof message.file.archive_id === "string") {
        // New to this page: a live change, or a change missed while disconnected (a resumed backlog).
        // A first backlog, or a newly granted program's, is the night so far: listed, not downloaded.
        const fresh = message.backlog === false || (link.resumed && !link.live);
        upsertFile(message.file, fresh);
      }
      break;
    case "live":
      link.live = true;
      link.attempt = 0;
      setConnection("live", "Live");
      break;
    case "programs":
      if (Array.isArray(message.programs)) setPrograms(message.programs);
      break;
    default:
      break; // heartbeat, and types added later
  }
  if (typeof message.cursor === "string") link.cursor = message.cursor;
}

// --- the table --------------------------------------------------------------------------------------------

function clearFiles() {
  link.elsewhere.clear();
  $("other-night").hidden = true;
  table.files.clear();
  table.rows.clear();
  table.instruments.clear();
  table.levels.clear();
  fillSelect($("filter-instrument"), "All instruments", []);
  fillSelect($("filter-level"), "All levels", []);
  scheduleRender();
}

/** A live file of another night than the one shown: not listed (a reload would not list it), but said. */
function noteOtherNight(file) {
  if (typeof file.night !== "string" || typeof file.archive_id !== "string") return;
  const ids = link.elsewhere.get(file.night) || new Set();
  ids.add(file.archive_id);
  link.elsewhere.set(file.night, ids);
  const latest = [...link.elsewhere.keys()].sort().pop();
  const count = link.elsewhere.get(latest).size;
  $("other-night-text").textContent =
    `${count} new file${count === 1 ? "" : "s"} of the night of ${latest} ${count === 1 ? "is" : "are"} not shown.`;
  $("show-other-night").dataset.night = latest;
  $("other-night").hidden = false;
}

/** Show ``chosen`` (YYYY-MM-DD): its backlog, then its live files; tonight's date follows tonight again. */
function chooseNight(chosen) {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(chosen)) return;
  const night = chosen === link.tonight ? null : chosen;
  if (night === link.night) return;
  link.night = night;
  link.cursor = null; // a cursor belongs to its night's stream
  $("night").value = chosen;
  clearFiles();
  if (session.token) connect();
}

function upsertFile(file, fresh) {
  table.files.set(file.archive_id, file);
  if (file.instrument_name && !table.instruments.has(file.instrument_name)) {
    table.instruments.add(file.instrument_name);
    const names = [...table.instruments].sort(compareText);
    fillSelect($("filter-instrument"), "All instruments", names.map((n) => [n, n]));
  }
  if (file.level != null && !table.levels.has(String(file.level))) {
    table.levels.add(String(file.level));
    const levels = [...table.levels].sort(compareText);
    fillSelect($("filter-level"), "All levels", levels.map((l) => [l, `Level ${l}`]));
  }
  if (fresh) autoDownload(file);
  scheduleRender();
}

/** Options of a select; with ``allLabel`` (a filter) the user's choice stays even when nothing matches it. */
function fillSelect(select, allLabel, entries) {
  const chosen = select.value;
  const options = entries.map(([value, label]) => new Option(label, value));
  if (allLabel !== null) options.unshift(new Option(allLabel, ""));
  select.replaceChildren(...options);
  const known = entries.some(([value]) => value === chosen);
  if (allLabel !== null && chosen && !known) select.add(new Option(chosen, chosen));
  if (known || allLabel !== null) select.value = chosen;
}

function scheduleRender() {
  if (table.renderPending) return;
  table.renderPending = true;
  // A backlog of many messages becomes one render per frame; the timer covers hidden tabs, which get no frames.
  const run = () => {
    if (table.renderPending) render();
  };
  requestAnimationFrame(run);
  setTimeout(run, 100);
}

function filters() {
  return {
    program: $("filter-program").value,
    instrument: $("filter-instrument").value,
    level: $("filter-level").value,
    state: $("filter-state").value,
    words: $("search").value.toLowerCase().split(/\s+/).filter(Boolean),
  };
}

function matches(file, f) {
  if (f.program && programKey(file) !== f.program) return false;
  if (f.instrument && file.instrument_name !== f.instrument) return false;
  if (f.level && String(file.level) !== f.level) return false;
  if (f.state && file.state !== f.state) return false;
  if (f.words.length) {
    const text = [
      file.archive_id,
      file.original_filename,
      file.target_name,
      file.instrument_name,
      programKey(file),
      file.product,
      file.intent,
      file.obset,
    ]
      .filter((v) => v != null)
      .join(" ")
      .toLowerCase();
    if (!f.words.every((w) => text.includes(w))) return false;
  }
  return true;
}

const collator = new Intl.Collator("en", { numeric: true, sensitivity: "base" });

function compareText(a, b) {
  return collator.compare(String(a), String(b));
}

function sortValue(file, column) {
  switch (column) {
    case "program":
      return programKey(file);
    case "observed_at": {
      const t = Date.parse(file.observed_at);
      return Number.isNaN(t) ? null : t;
    }
    default:
      return file[column] ?? null;
  }
}

function compareFiles(a, b) {
  const { column, descending } = table.sort;
  const x = sortValue(a, column);
  const y = sortValue(b, column);
  let order;
  if (x === null || y === null) {
    order = x === y ? 0 : x === null ? 1 : -1; // missing values last, whichever the direction
    if (order !== 0) return order;
  } else if (typeof x === "number" && typeof y === "number") {
    order = x - y;
  } else {
    order = compareText(x, y);
  }
  if (descending) order = -order;
  return order || compareText(a.archive_id, b.archive_id);
}

function render() {
  table.renderPending = false;
  const f = filters();
  const shown = [...table.files.values()].filter((file) => matches(file, f)).sort(compareFiles);
  const rows = shown.map(rowFor);
  const body = $("file-rows");
  const current = body.children;
  if (current.length !== rows.length || rows.some((tr, i) => current[i] !== tr)) body.replaceChildren(...rows);
  const total = table.files.size;
  $("file-count").textContent =
    total === 0
      ? "No files yet"
      : shown.length === total
        ? `${total} file${total === 1 ? "" : "s"}`
        : `Showing ${shown.length} of ${total} files`;
  $("empty").hidden = total !== 0;
}

function rowFor(file) {
  const cached = table.rows.get(file.archive_id);
  if (cached && cached.file === file) return cached.tr;
  const tr = document.createElement("tr");
  tr.dataset.archiveId = file.archive_id;
  tr.dataset.state = file.state || "";
  tr.dataset.testid = "file-row";
  const id = document.createElement("th");
  id.scope = "row";
  id.dataset.label = "Archive ID";
  id.dataset.column = "archive_id";
  id.textContent = file.archive_id;
  if (file.version > 1) {
    const version = document.createElement("span");
    version.className = "version";
    version.textContent = ` v${file.version}`;
    id.append(version);
  }
  tr.append(
    id,
    cell("Program", "program", programKey(file)),
    cell("Original name", "original_filename", file.original_filename),
    cell("Instrument", "instrument_name", file.instrument_name),
    cell("Level", "level", file.level),
    cell("Target", "target_name", file.target_name),
    timeCell(file.observed_at),
    cell("Exposure", "t_exptime", file.t_exptime == null ? "" : `${formatNumber(file.t_exptime)} s`, "number"),
    cell("Size", "size_bytes", formatSize(file.size_bytes), "number"),
    stateCell(file.state),
    actionCell(file),
  );
  table.rows.set(file.archive_id, { file, tr });
  return tr;
}

function cell(label, column, text, className) {
  const td = document.createElement("td");
  td.dataset.label = label;
  td.dataset.column = column;
  if (className) td.className = className;
  td.textContent = text ?? "";
  return td;
}

function timeCell(observedAt) {
  const td = cell("UT time", "observed_at", "");
  const when = new Date(observedAt);
  if (!observedAt || Number.isNaN(when.getTime())) return td;
  const iso = when.toISOString();
  const time = document.createElement("time");
  time.dateTime = iso;
  time.title = `${iso.slice(0, 10)} ${iso.slice(11, 19)} UT`;
  // A site's night spans two UT dates (Keck's, from 22:00 UT to 22:00 UT): the date always goes with the time.
  time.textContent = `${iso.slice(5, 10)} ${iso.slice(11, 19)}`;
  td.append(time);
  return td;
}

function stateCell(state) {
  const td = cell("State", "state", "");
  const badge = document.createElement("span");
  badge.className = `state state-${state}`;
  badge.textContent = STATES[state] || state || "";
  td.append(badge);
  return td;
}

function actionCell(file) {
  const td = cell("Download", "actions", "", "actions");
  const button = document.createElement("button");
  button.type = "button";
  button.dataset.action = "download";
  button.dataset.testid = "download-button";
  button.textContent = "Download";
  button.setAttribute("aria-label", `Download ${file.original_filename || file.archive_id}`);
  td.append(button);
  return td;
}

function formatNumber(value) {
  return Number(value).toLocaleString("en", { maximumFractionDigits: 2 });
}

function formatSize(bytes) {
  if (bytes == null) return "";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let value = Number(bytes);
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

function sortBy(column) {
  if (table.sort.column === column) {
    table.sort.descending = !table.sort.descending;
  } else {
    table.sort = { column, descending: false };
  }
  showSort();
  scheduleRender();
}

function showSort() {
  for (const th of document.querySelectorAll("#files thead th[data-column]")) {
    if (th.dataset.column === table.sort.column) {
      th.setAttribute("aria-sort", table.sort.descending ? "descending" : "ascending");
    } else {
      th.removeAttribute("aria-sort");
    }
  }
}

// --- downloads --------------------------------------------------------------------------------------------

/** Raw: straight from the instrument (level 0, or a product named raw or uncal); reduced: everything else. */
function isRaw(file) {
  return String(file.level) === "0" || RAW_PRODUCTS.has(String(file.product || "").toLowerCase());
}

function autoDownload(file) {
  const mode = $("auto-download").value;
  if (mode === "none" || file.state === "public") return; // becoming public is not a new file
  if ((mode === "raw") !== isRaw(file)) return;
  if (downloads.seen.has(downloadKey(file))) return;
  enqueueDownload(file);
}

function downloadKey(file) {
  return `${file.archive_id}@${file.version}`;
}

function enqueueDownload(file) {
  const item = { archive_id: file.archive_id, version: file.version, original_filename: file.original_filename };
  const key = downloadKey(item);
  const pending = downloads.queue.some((q) => downloadKey(q) === key);
  if (pending || (downloads.current && downloadKey(downloads.current) === key)) return;
  downloads.seen.add(key);
  downloads.queue.push(item);
  showDownloads();
  pumpDownloads();
}

async function pumpDownloads() {
  if (downloads.busy) return;
  downloads.busy = true;
  let last = "";
  try {
    while (downloads.queue.length > 0 && session.token) {
      const item = downloads.queue.shift();
      downloads.current = item;
      showDownloads();
      try {
        // A ticket for each file: good once, it lets the browser fetch the file itself and stream it to disk.
        const ticket = await newTicket();
        saveFile(item, ticket);
        last = `Sent ${item.original_filename || item.archive_id} to your downloads.`;
      } catch (err) {
        if (err.status === 401) {
          signOut(`Signed out: ${err.message}`);
          return;
        }
        last = `Could not download ${item.archive_id}: ${err.message}`;
      }
      await new Promise((resolve) => setTimeout(resolve, DOWNLOAD_SPACING_MS));
    }
  } finally {
    downloads.busy = false;
    downloads.current = null;
    showDownloads(last);
  }
}

function saveFile(item, ticket) {
  const params = new URLSearchParams({ version: String(item.version), ticket });
  const anchor = document.createElement("a");
  anchor.href = `/v1/files/${encodeURIComponent(item.archive_id)}?${params}`;
  anchor.download = item.original_filename || item.archive_id;
  anchor.hidden = true;
  document.body.append(anchor);
  anchor.click();
  anchor.remove();
}

function showDownloads(last) {
  const box = $("download-status");
  if (downloads.current) {
    const waiting = downloads.queue.length;
    box.textContent =
      `Downloading ${downloads.current.original_filename || downloads.current.archive_id}` +
      (waiting ? ` (${waiting} waiting)` : "");
  } else if (last !== undefined) {
    box.textContent = last;
  }
}

// --- members ----------------------------------------------------------------------------------------------

function selectedProgram() {
  const key = $("members-program").value;
  return session.programs.find((p) => programKey(p) === key) || null;
}

function canManage(program) {
  return Boolean(program && (program.role === "pi" || (session.me && session.me.is_admin)));
}

function showMembersResult({ message = "", error = "" }) {
  $("members-message").textContent = message;
  $("members-message").hidden = !message;
  $("members-error").textContent = error;
  $("members-error").hidden = !error;
}

async function loadMembers() {
  const program = selectedProgram();
  const rows = $("member-rows");
  const manage = canManage(program);
  $("grant-form").hidden = !manage;
  $("members-readonly").hidden = !program || manage;
  for (const option of $("grant-role").querySelectorAll("option[data-admin-only]")) {
    option.hidden = option.disabled = !(session.me && session.me.is_admin);
  }
  if (!program) {
    rows.replaceChildren();
    return;
  }
  $("members-caption").textContent = `Members of ${programKey(program)}`;
  let body;
  try {
    body = await api("GET", `${programPath(program.mission, program.propid)}/members`);
  } catch (err) {
    if (err.status === 401) return signOut(`Signed out: ${err.message}`);
    rows.replaceChildren();
    showMembersResult({ error: err.message });
    return;
  }
  if (selectedProgram() !== program) return; // another program was chosen meanwhile
  rows.replaceChildren(...(body.members || []).map((m) => memberRow(program, m, manage)));
}

function memberRow(program, member, manage) {
  const tr = document.createElement("tr");
  tr.dataset.username = member.username;
  tr.dataset.role = member.role;
  tr.dataset.testid = "member-row";
  const name = document.createElement("th");
  name.scope = "row";
  name.dataset.label = "User";
  name.textContent = member.username;
  const since = member.granted_at ? String(member.granted_at).slice(0, 10) : "";
  tr.append(
    name,
    cell("Role", "role", roleName(member.role)),
    cell("Granted by", "granted_by", member.granted_by || "the archive"),
    cell("Since", "granted_at", since),
  );
  const actions = cell("Actions", "actions", "", "actions");
  // The PI can remove co-investigators and collaborators; only an administrator can remove a PI.
  if (manage && (member.role !== "pi" || session.me.is_admin)) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.action = "remove";
    button.dataset.testid = "remove-member";
    button.textContent = "Remove";
    button.setAttribute("aria-label", `Remove ${member.username} from ${programKey(program)}`);
    actions.append(button);
  }
  tr.append(actions);
  return tr;
}

async function grantMember(event) {
  event.preventDefault();
  const program = selectedProgram();
  const username = $("grant-username").value.trim().toLowerCase();
  const role = $("grant-role").value;
  if (!program) return;
  if (!username) {
    showMembersResult({ error: "Enter the username of the person to add." });
    $("grant-username").focus();
    return;
  }
  const submit = $("grant-form").querySelector("button[type=submit]");
  submit.disabled = true;
  try {
    const path = `${programPath(program.mission, program.propid)}/members/${encodeURIComponent(username)}`;
    const body = await api("PUT", path, { role });
    const verb = body && body.changed === false ? "already was" : "is now";
    showMembersResult({ message: `${username} ${verb} ${roleWithArticle(role)} of ${programKey(program)}.` });
    $("grant-username").value = "";
  } catch (err) {
    if (err.status === 401) return signOut(`Signed out: ${err.message}`);
    showMembersResult({ error: `Could not add ${username}: ${err.message}` });
  } finally {
    submit.disabled = false;
  }
  await loadMembers();
}

async function removeMember(button) {
  const program = selectedProgram();
  const username = button.closest("tr").dataset.username;
  if (!program) return;
  // Two steps: the first press asks, the second removes (no modal dialog to dismiss).
  if (button.dataset.confirming !== "yes") {
    button.dataset.confirming = "yes";
    button.textContent = `Confirm: remove ${username}`;
    button.setAttribute("aria-label", `Confirm: remove ${username} from ${programKey(program)}`);
    button.dataset.testid = "confirm-remove-member";
    return;
  }
  button.disabled = true;
  try {
    await api("DELETE", `${programPath(program.mission, program.propid)}/members/${encodeURIComponent(username)}`);
    showMembersResult({ message: `${username} is no longer a member of ${programKey(program)}.` });
  } catch (err) {
    if (err.status === 401) return signOut(`Signed out: ${err.message}`);
    showMembersResult({ error: `Could not remove ${username}: ${err.message}` });
  }
  await loadMembers();
}

function showView(name) {
  const members = name === "members";
  $("files-view").hidden = members;
  $("members-view").hidden = !members;
  $("show-files").setAttribute("aria-pressed", String(!members));
  $("show-members").setAttribute("aria-pressed", String(members));
  if (members) {
    showMembersResult({});
    loadMembers();
  }
}

// --- wiring -----------------------------------------------------------------------------------------------

function start() {
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) {
      showSignIn("Enter your API token.");
      return;
    }
    $("token").value = "";
    signIn(token, { remembered: false });
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("show-files").addEventListener("click", () => showView("files"));
  $("show-members").addEventListener("click", () => showView("members"));

  $("filters").addEventListener("submit", (event) => event.preventDefault());
  for (const id of ["filter-program", "filter-instrument", "filter-level", "filter-state"]) {
    $(id).addEventListener("change", scheduleRender);
  }
  $("search").addEventListener("input", scheduleRender);
  $("night").addEventListener("change", () => chooseNight($("night").value));
  $("show-other-night").addEventListener("click", (event) => chooseNight(event.currentTarget.dataset.night));
  for (const th of document.querySelectorAll("#files thead th[data-column]")) {
    th.querySelector("button").addEventListener("click", () => sortBy(th.dataset.column));
  }
  showSort();
  $("file-rows").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action=download]");
    if (!button) return;
    const file = table.files.get(button.closest("tr").dataset.archiveId);
    if (file) enqueueDownload(file);
  });

  $("members-program").addEventListener("change", () => {
    showMembersResult({});
    loadMembers();
  });
  $("members-program-form").addEventListener("submit", (event) => event.preventDefault());
  $("grant-form").addEventListener("submit", grantMember);
  $("member-rows").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action=remove]");
    if (button) removeMember(button);
  });

  // Back on the network: no need to wait for the back-off.
  window.addEventListener("online", () => {
    if (session.token && !link.socket) connect();
  });

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    signIn(saved, { remembered: true });
  } else {
    showSignIn("");
  }
  render();
}

start();
