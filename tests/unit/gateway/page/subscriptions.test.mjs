// The page's subscriptions in words and in request bodies (services/gateway/static/js/subscriptions.js), and the
// routes that name one subscription (js/router.js), run by `node --test`.

import assert from "node:assert/strict";
import { test } from "node:test";

import { hashOf, routeOf } from "../../../../services/gateway/static/js/router.js";
import {
  changeOf,
  defaultLevelText,
  describe,
  formOf,
  levelOrders,
  missing,
  newForm,
  previewText,
  requestOf,
} from "../../../../services/gateway/static/js/subscriptions.js";

const KEPT = {
  subscription_id: 12,
  username: "alice",
  email: "alice@example.org",
  mission: "JWST",
  propid: "2739",
  obset: null,
  archive_id: null,
  triggers: ["new", "repro"],
  min_level: "2b",
  or_above: true,
  frequency: "weekly",
  time_of_day: "07:30",
  time_zone: "Europe/Paris",
  channel: "email",
  webhook_url: null,
  active: true,
  stopped_at: null,
  stopped_reason: null,
};

test("routes name a view, and may name one thing below it with the form's first values", () => {
  assert.deepEqual(routeOf("#/files"), { name: "files", id: "", params: {} });
  assert.deepEqual(routeOf("#/members"), { name: "members", id: "", params: {} });
  assert.deepEqual(routeOf("#/subscriptions/12"), { name: "subscriptions", id: "12", params: {} });
  assert.deepEqual(routeOf("#/subscriptions/new?mission=KECK&propid=2026B_U042"), {
    name: "subscriptions",
    id: "new",
    params: { mission: "KECK", propid: "2026B_U042" },
  });
  for (const anchor of ["#main", "", "#/nowhere", "#/files/a/b", "#/subscriptions/<x>"]) {
    assert.equal(routeOf(anchor), null, anchor);
  }
});

test("a route's hash leads back to the same route", () => {
  const hash = hashOf("subscriptions", "new", { archive_id: "KOA.HIRES.2026-12-01.123", mission: "" });
  assert.equal(hash, "#/subscriptions/new?archive_id=KOA.HIRES.2026-12-01.123");
  assert.deepEqual(routeOf(hash).params, { archive_id: "KOA.HIRES.2026-12-01.123" });
  assert.equal(hashOf("inbox"), "#/inbox");
});

test("a new program subscription asks for every trigger, daily, by email, in the browser's zone", () => {
  const form = newForm({ mission: "keck", propid: "2026B_U042" }, "America/Chicago");
  assert.equal(missing(form), "");
  assert.deepEqual(requestOf(form), {
    mission: "KECK",
    propid: "2026B_U042",
    obset: null,
    triggers: ["new", "first", "repro", "public"],
    min_level: null,
    or_above: true,
    frequency: "daily",
    time_of_day: "08:00",
    time_zone: "America/Chicago",
    channel: "email",
    webhook_url: null,
  });
});

test("a file's subscription names the archive ID and no level; a webhook names its address", () => {
  const form = { ...newForm({ archive_id: "KOA.X.1" }), channel: "webhook", webhookUrl: " https://h.example/x " };
  const body = requestOf(form);
  assert.equal(body.archive_id, "KOA.X.1");
  assert.ok(!("mission" in body) && !("min_level" in body));
  assert.equal(body.webhook_url, "https://h.example/x");
});

test("what is missing is said before anything is asked", () => {
  assert.equal(missing(newForm()), "Enter the mission and the program ID.");
  assert.equal(missing(newForm({ archive_id: "" }, "UTC")), "Enter the mission and the program ID.");
  assert.equal(missing({ ...newForm(), target: "file" }), "Enter the archive ID of the file.");
  const none = { ...newForm({ mission: "K", propid: "P" }), triggers: { new: false } };
  assert.equal(missing(none), "Choose at least one kind of change to hear about.");
  const hook = { ...newForm({ mission: "K", propid: "P" }), channel: "webhook" };
  assert.equal(missing(hook), "Enter the address the webhook is sent to.");
});

test("a kept subscription edits to the same settings it has", () => {
  const change = changeOf(formOf(KEPT));
  assert.deepEqual(change, {
    triggers: ["new", "repro"],
    min_level: "2b",
    or_above: true,
    frequency: "weekly",
    time_of_day: "07:30",
    time_zone: "Europe/Paris",
    channel: "email",
    webhook_url: null,
  });
});

test("a subscription is listed in words", () => {
  assert.deepEqual(describe(KEPT), {
    what: "JWST/2739",
    triggers: "New data, Reprocessed",
    level: "2b or above",
    frequency: "Weekly at 07:30 (Europe/Paris)",
    channel: "Email to alice@example.org",
    stopped: "",
  });
  const fast = describe({ ...KEPT, frequency: "fast", min_level: null, channel: "page", obset: "002" });
  assert.equal(fast.frequency, "As it happens");
  assert.equal(fast.level, "Every level");
  assert.equal(fast.channel, "On this page");
  assert.equal(fast.what, "JWST/2739 obset 002");
  const stopped = describe({ ...KEPT, stopped_at: "2026-12-01T00:00:00Z", stopped_reason: "550 no such user" });
  assert.equal(stopped.stopped, "Stopped: 550 no such user");
});

test("a preview says how many messages about how many events, in the channel's words", () => {
  const answer = { days: 30, events: 9, notices: 5, messages: 2, by_trigger: {}, first: null, last: null };
  assert.equal(
    previewText(answer, "email"),
    "Over the last 30 days these settings would have sent 2 emails about 5 events.",
  );
  assert.equal(
    previewText({ ...answer, messages: 1, notices: 1 }, "page"),
    "Over the last 30 days these settings would have sent 1 in-page notice about 1 event.",
  );
  assert.equal(
    previewText({ ...answer, notices: 0, messages: 0 }, "email"),
    "Over the last 30 days these settings would have sent nothing (9 events, none of these kinds or levels).",
  );
  assert.equal(
    previewText({ ...answer, messages: 0 }, "email"),
    "Over the last 30 days these settings would have sent no email yet: 5 events wait for the next digest.",
  );
  assert.equal(
    previewText({ ...answer, events: 0, notices: 0, messages: 0 }, "webhook"),
    "Over the last 30 days these settings would have sent nothing.",
  );
});

test("the notifier's level orders, by mission, and what an empty level means", () => {
  const orders = levelOrders({
    missions: [
      { mission: "JWST", levels: ["1b", "2a", "2b", "3"], default_level: "2b" },
      { mission: "keck", levels: ["0", "1", "2"], default_level: null },
    ],
  });
  assert.deepEqual(orders.KECK, { levels: ["0", "1", "2"], defaultLevel: null });
  assert.equal(defaultLevelText(orders.JWST), "The mission's default: 2b or above");
  assert.equal(defaultLevelText(orders.KECK), "Every level");
  assert.deepEqual(levelOrders(null), {}, "no answer: no orders, and the form takes any text");
});
