// The stream's reconnect state machine (services/gateway/static/js/stream.js), run by `node --test`.

import assert from "node:assert/strict";
import { test } from "node:test";

import { MAX_RETRY_DELAY_S, initial, step } from "../../../../services/gateway/static/js/stream.js";

const LOW = () => 0; // the jitter's lowest draw: 80 % of the back-off
const HIGH = () => 1; // its highest: 120 %

/** Runs ``events`` from ``state``; the last state, and every effect in order (generations stamped in). */
function run(state, events, random = LOW) {
  const effects = [];
  for (const event of events) {
    const stamped = typeof event === "function" ? event(state) : event;
    const next = step(state, stamped, random);
    state = next.state;
    effects.push(...next.effects);
  }
  return { state, effects };
}

const at = (event) => (state) => ({ ...event, generation: state.generation });
const of = (effects, type) => effects.filter((e) => e.type === type);
const file = (id, extra = {}) => ({ archive_id: id, night: "2026-11-30", version: 1, ...extra });
const message = (m) => at({ type: "message", message: m });

/** Signed in and live on tonight (2026-11-30), cursor "c2". */
function live() {
  return run(initial(), [
    { type: "start" },
    at({ type: "ticket", ticket: "tk_1" }),
    message({ type: "hello", night: "2026-11-30", heartbeat: 5, programs: [], cursor: "c1" }),
    message({ type: "live", cursor: "c2" }),
  ]);
}

test("a first connection lists the night so far without downloading it, then every live file is new", () => {
  const { state, effects } = run(initial(), [
    { type: "start" },
    at({ type: "ticket", ticket: "tk_1" }),
    message({ type: "hello", night: "2026-11-30", heartbeat: 5, programs: [{ mission: "KECK", propid: "P1" }] }),
    message({ type: "file", backlog: true, file: file("A1"), cursor: "c1" }),
    message({ type: "live", cursor: "c1" }),
    message({ type: "file", backlog: false, file: file("A2"), cursor: "c2" }),
  ]);
  assert.deepEqual(of(effects, "fetch-ticket").length, 1);
  assert.deepEqual(of(effects, "open")[0].params, { ticket: "tk_1", protocol: 2 }); // no night: it follows tonight
  assert.deepEqual(of(effects, "tonight"), [{ type: "tonight", night: "2026-11-30" }]);
  assert.equal(of(effects, "programs").length, 1);
  assert.deepEqual(
    of(effects, "file").map((e) => [e.file.archive_id, e.fresh]),
    [
      ["A1", false],
      ["A2", true],
    ],
  );
  assert.deepEqual(of(effects, "status").at(-1), { type: "status", kind: "live", text: "Live" });
  // The hello's heartbeat sets the watchdog: three periods without a message.
  assert.equal(of(effects, "watch").at(-1).seconds, 15);
  assert.equal(state.cursor, "c2");
});

test("a lost connection retries with a doubling back-off, capped, with jitter, and resumes from its cursor", () => {
  let { state } = live();
  const waits = [];
  for (let i = 0; i < 8; i += 1) {
    const next = run(state, [at({ type: "closed", code: 1006 })], i % 2 ? HIGH : LOW);
    state = next.state;
    waits.push(of(next.effects, "wait")[0]);
    assert.equal(of(next.effects, "close").length, 1);
    if (i < 7) state = run(state, [at({ type: "retry-due" }), at({ type: "ticket", ticket: `tk_r${i}` })]).state;
  }
  assert.deepEqual(
    waits.map((w) => Math.round(w.seconds * 10) / 10),
    [0.8, 2.4, 3.2, 9.6, 12.8, 36, 24, 36], // 1, 2, 4, 8, 16, then 30 s at most, ±20 %
  );
  assert.ok(waits.every((w) => w.seconds <= MAX_RETRY_DELAY_S * 1.2 + 1e-9));
  assert.equal(waits[0].reason, "connection lost");
  assert.equal(waits[1].reason, "cannot connect"); // it never came back live in between

  const resumed = run(state, [
    at({ type: "retry-due" }),
    at({ type: "ticket", ticket: "tk_2" }),
    message({ type: "hello", night: "2026-11-30" }),
    message({ type: "file", backlog: true, file: file("A3"), cursor: "c3" }),
    message({ type: "live", cursor: "c3" }),
  ]);
  assert.deepEqual(of(resumed.effects, "open")[0].params, { ticket: "tk_2", protocol: 2, cursor: "c2" });
  assert.equal(of(resumed.effects, "status")[1].text, "Catching up…");
  // Missed while away: new to the observer, so downloaded like a live file.
  assert.deepEqual(of(resumed.effects, "file")[0].fresh, true);
  assert.equal(resumed.state.attempt, 0);
  const again = run(resumed.state, [at({ type: "closed", code: 1006 })]);
  assert.equal(of(again.effects, "wait")[0].seconds, 0.8); // live again: the back-off starts over
});

test("events of an earlier attempt are ignored", () => {
  const { state } = live();
  const old = state.generation;
  const retried = run(state, [at({ type: "watchdog" })]);
  assert.equal(of(retried.effects, "wait")[0].reason, "no heartbeat");
  const late = run(retried.state, [
    { type: "closed", code: 1006, generation: old },
    { type: "message", generation: old, message: { type: "file", backlog: false, file: file("A9") } },
  ]);
  assert.deepEqual(late.effects, []);
  assert.deepEqual(late.state, retried.state);
});

test("a revoked token signs out; the gateway's other closes retry with their reason", () => {
  const { state } = live();
  for (const [code, reason] of [
    [1001, "the gateway is restarting"],
    [4008, "the page fell behind"],
  ]) {
    assert.equal(of(run(state, [at({ type: "closed", code })]).effects, "wait")[0].reason, reason);
  }
  const revoked = run(state, [at({ type: "closed", code: 4001 })]);
  assert.deepEqual(of(revoked.effects, "sign-out"), [
    { type: "sign-out", reason: "Your token was revoked: sign in again with a valid one." },
  ]);
  assert.equal(revoked.state.phase, "idle");
  // Nothing late of the stopped stream starts it again.
  for (const late of [{ type: "watchdog" }, { type: "closed", code: 1006 }, { type: "retry-due" }, { type: "online" }]) {
    assert.deepEqual(run(revoked.state, [at(late)]).effects, []);
  }

  const refused = run(initial(), [{ type: "start" }, at({ type: "ticket-failed", status: 401, message: "no" })]);
  assert.deepEqual(of(refused.effects, "sign-out")[0].reason, "Signed out: no");
  const unreachable = run(initial(), [{ type: "start" }, at({ type: "ticket-failed", status: 0, message: "down" })]);
  assert.equal(of(unreachable.effects, "wait")[0].reason, "down");
});

test("another night shows its own files, says so of tonight's new ones, and tonight's date follows tonight", () => {
  const { state } = live();
  const chosen = run(state, [
    { type: "night", night: "2026-11-29" },
    at({ type: "ticket", ticket: "tk_2" }),
    message({ type: "file", backlog: true, file: file("B1", { night: "2026-11-29" }), cursor: "d1" }),
    message({ type: "live", cursor: "d1" }),
    message({ type: "file", backlog: false, file: file("A5"), cursor: "d2" }),
    message({ type: "hello", night: "2026-11-30" }),
  ]);
  assert.deepEqual(
    chosen.effects.slice(0, 2).map((e) => e.type),
    ["show-night", "clear-files"],
  );
  // A cursor belongs to its night's stream: the chosen night starts from its beginning.
  assert.deepEqual(of(chosen.effects, "open")[0].params, { ticket: "tk_2", protocol: 2, night: "2026-11-29" });
  assert.deepEqual(
    of(chosen.effects, "file").map((e) => e.file.archive_id),
    ["B1"],
  );
  assert.deepEqual(of(chosen.effects, "other-night")[0].file.archive_id, "A5");
  assert.deepEqual(of(chosen.effects, "tonight"), []); // a chosen night stays chosen

  const back = run(chosen.state, [{ type: "night", night: "2026-11-30" }, at({ type: "ticket", ticket: "tk_3" })]);
  assert.deepEqual(of(back.effects, "open")[0].params, { ticket: "tk_3", protocol: 2 });
  assert.deepEqual(run(back.state, [{ type: "night", night: "2026-11-30" }]).effects, []);
  assert.deepEqual(run(back.state, [{ type: "night", night: "30/11/2026" }]).effects, []);
});

test("back online, a waiting page connects at once; a connected one does nothing", () => {
  const { state } = live();
  assert.deepEqual(run(state, [{ type: "online" }]).effects, []);
  const waiting = run(state, [at({ type: "closed", code: 1006 })]).state;
  const online = run(waiting, [{ type: "online" }]);
  assert.equal(of(online.effects, "fetch-ticket").length, 1);
  assert.equal(online.state.phase, "ticket");
});

test("a night chosen before signing in is kept for the stream's start", () => {
  const { state, effects } = run(initial(), [{ type: "night", night: "2026-11-29" }]);
  assert.deepEqual(
    effects.map((e) => e.type),
    ["show-night", "clear-files"],
  );
  assert.equal(state.phase, "idle");
  const started = run(state, [{ type: "start" }, at({ type: "ticket", ticket: "tk" })]);
  assert.deepEqual(of(started.effects, "open")[0].params, { ticket: "tk", protocol: 2, night: "2026-11-29" });
});

test("a files message (protocol 2) is each of its files in order, fresh when live, and its cursor is kept", () => {
  const { state, effects } = run(initial(), [
    { type: "start" },
    at({ type: "ticket", ticket: "tk_1" }),
    message({ type: "hello", night: "2026-11-30", heartbeat: 5, programs: [] }),
    message({
      type: "files",
      backlog: true,
      cursor: "c2",
      files: [
        { cursor: "c1", file: file("B1") },
        { cursor: "c2", file: file("B2") },
      ],
    }),
    message({ type: "live", cursor: "c2" }),
    message({
      type: "files",
      backlog: false,
      cursor: "c5",
      files: [{ cursor: "c3", file: file("B3") }, null, { cursor: "c5", file: file("B5") }],
    }),
  ]);
  assert.deepEqual(
    of(effects, "file").map((e) => [e.file.archive_id, e.fresh]),
    [
      ["B1", false],
      ["B2", false],
      ["B3", true],
      ["B5", true],
    ],
  );
  assert.equal(state.cursor, "c5");
});
