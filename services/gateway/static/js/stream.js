// The stream's reconnect state machine (services/gateway/PROTOCOL.md), pure: step(state, event) returns the
// next state and the effects to run. It opens no socket and sets no timer; js/link.js does, and feeds back
// what happened. Every attempt has its own generation: events of an older attempt are ignored.

export const DEFAULT_HEARTBEAT_S = 15;
export const MAX_RETRY_DELAY_S = 30;
const NIGHT = /^\d{4}-\d{2}-\d{2}$/;

/**
 * Phases: "idle" (not running), "ticket" (asking for a ticket), "open" (socket opened or opening),
 * "waiting" (a retry is due later).
 */
export function initial() {
  return {
    phase: "idle",
    generation: 0,
    // The observing night shown: null follows tonight, whose date the stream's hello names; a date is a night
    // the user chose (named by the local date it began on; the gateway and catalog decide).
    night: null,
    tonight: null,
    cursor: null, // the cursor of the last message received for this night
    attempt: 0, // failed attempts since the stream was last live: sets the back-off
    heartbeat: DEFAULT_HEARTBEAT_S,
    resumed: false, // this attempt resumed from a cursor: its backlog is what was missed
    live: false,
  };
}

/** Seconds to wait before attempt ``attempt`` (1, 2, …): doubling up to a ceiling, with ±20 % jitter. */
export function retryDelay(attempt, random) {
  const base = Math.min(MAX_RETRY_DELAY_S, 2 ** (attempt - 1));
  return base * (0.8 + random() * 0.4); // jitter, so that many pages do not come back at once
}

/**
 * One event: {type: "start" | "stop" | "online" | "night" | "ticket" | "ticket-failed" | "message" | "closed" |
 * "watchdog" | "retry-due", generation?, …}. ``random`` gives the jitter (injected, so tests are exact).
 * Effects: {type: "close"} (drop the socket and every timer), "fetch-ticket", "open" ({params}), "watch"
 * ({seconds}: no message for that long means a dead link), "wait" ({seconds, reason}: then "retry-due"),
 * "status" ({kind, text}), "sign-out" ({reason}), "programs", "tonight", "file" ({file, fresh}),
 * "other-night" ({file}), "clear-files", "show-night" ({night}).
 */
export function step(state, event, random = Math.random) {
  const stale = event.generation !== undefined && event.generation !== state.generation;
  // Nothing of a stopped stream (a late socket event, a timer) starts it again: only "start" does.
  const stopped = state.phase === "idle" && !["start", "stop", "night"].includes(event.type);
  if (stale || stopped) return { state, effects: [] };
  switch (event.type) {
    case "start":
      return connect(state);
    case "stop":
      return { state: { ...state, phase: "idle", generation: state.generation + 1 }, effects: [{ type: "close" }] };
    case "online":
      // Back on the network: no need to wait for the back-off.
      return state.phase === "waiting" ? connect(state) : { state, effects: [] };
    case "night":
      return chooseNight(state, event.night);
    case "ticket": {
      // Protocol 2 (PROTOCOL.md): files that come together arrive as one ``files`` message.
      const params = { ticket: event.ticket, protocol: 2 };
      if (state.night) params.night = state.night;
      if (state.cursor) params.cursor = state.cursor;
      const next = {
        ...state,
        phase: "open",
        resumed: state.cursor !== null,
        live: false,
        heartbeat: DEFAULT_HEARTBEAT_S,
      };
      return { state: next, effects: [{ type: "open", params }, watch(next)] };
    }
    case "ticket-failed":
      if (event.status === 401) return signOut(state, `Signed out: ${event.message}`);
      return retryLater(state, event.message, random);
    case "message":
      return receive(state, event.message);
    case "closed":
      if (event.code === 4001) return signOut(state, "Your token was revoked: sign in again with a valid one.");
      if (event.code === 4008) return retryLater(state, "the page fell behind", random);
      if (event.code === 1001) return retryLater(state, "the gateway is restarting", random);
      return retryLater(state, state.live ? "connection lost" : "cannot connect", random);
    case "watchdog":
      return retryLater(state, "no heartbeat", random);
    case "retry-due":
      return state.phase === "waiting" ? ticket(state, state.generation) : { state, effects: [] };
    default:
      return { state, effects: [] };
  }
}

function connect(state) {
  return ticket(state, state.generation + 1);
}

function ticket(state, generation) {
  return {
    state: { ...state, phase: "ticket", generation },
    effects: [
      { type: "close" },
      { type: "status", kind: "connecting", text: "Connecting…" },
      { type: "fetch-ticket", generation },
    ],
  };
}

function watch(state) {
  return { type: "watch", seconds: state.heartbeat * 3, generation: state.generation };
}

function signOut(state, reason) {
  return {
    state: { ...state, phase: "idle", generation: state.generation + 1 },
    effects: [{ type: "close" }, { type: "sign-out", reason }],
  };
}

function retryLater(state, reason, random) {
  const attempt = state.attempt + 1;
  const generation = state.generation + 1;
  return {
    state: { ...state, phase: "waiting", generation, attempt },
    effects: [{ type: "close" }, { type: "wait", seconds: retryDelay(attempt, random), reason, generation }],
  };
}

/** Show ``chosen`` (YYYY-MM-DD): its backlog, then its live files; tonight's date follows tonight again. */
function chooseNight(state, chosen) {
  if (typeof chosen !== "string" || !NIGHT.test(chosen)) return { state, effects: [] };
  const night = chosen === state.tonight ? null : chosen;
  if (night === state.night) return { state, effects: [] };
  // A cursor belongs to its night's stream.
  const next = { ...state, night, cursor: null };
  const effects = [{ type: "show-night", night: chosen }, { type: "clear-files" }];
  if (state.phase === "idle") return { state: next, effects };
  const reconnect = connect(next);
  return { state: reconnect.state, effects: [...effects, ...reconnect.effects] };
}

/** The effects of one file of a ``file`` or ``files`` message, pushed onto ``effects``. */
function fileEffects(state, file, backlog, effects) {
  if (!file || typeof file !== "object") return;
  // A chosen night shows its own files only, as its backlog does after a reload; following tonight, every
  // change is news (a file of a night just begun, a reprocessed one).
  if (state.night && file.night !== state.night) {
    if (backlog === false) effects.push({ type: "other-night", file });
    return;
  }
  if (typeof file.archive_id === "string") {
    // New to this page: a live change, or a change missed while disconnected (a resumed backlog). A first
    // backlog, or a newly granted program's, is the night so far: listed, not downloaded.
    const fresh = backlog === false || (state.resumed && !state.live);
    effects.push({ type: "file", file, fresh });
  }
}

function receive(state, message) {
  if (!message || typeof message !== "object") return { state, effects: [] };
  let next = state;
  const effects = [watch(state)];
  switch (message.type) {
    case "hello":
      if (Number.isFinite(message.heartbeat) && message.heartbeat > 0) {
        next = { ...next, heartbeat: message.heartbeat };
        effects[0] = watch(next);
      }
      if (Array.isArray(message.programs)) effects.push({ type: "programs", programs: message.programs });
      if (!next.night && typeof message.night === "string") {
        next = { ...next, tonight: message.night };
        effects.push({ type: "tonight", night: message.night });
      }
      effects.push({ type: "status", kind: "connecting", text: next.resumed ? "Catching up…" : "Loading the night…" });
      break;
    case "file":
      fileEffects(next, message.file, message.backlog, effects);
      break;
    case "files": // protocol 2: files that came together (a release, a page of the backlog), in catalog order
      if (Array.isArray(message.files)) {
        for (const entry of message.files) fileEffects(next, entry && entry.file, message.backlog, effects);
      }
      break;
    case "live":
      next = { ...next, live: true, attempt: 0 };
      effects.push({ type: "status", kind: "live", text: "Live" });
      break;
    case "programs":
      if (Array.isArray(message.programs)) effects.push({ type: "programs", programs: message.programs });
      break;
    default:
      break; // heartbeat, and types added later
  }
  if (typeof message.cursor === "string") next = { ...next, cursor: message.cursor };
  return { state: next, effects };
}
