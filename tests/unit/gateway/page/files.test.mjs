// The observer page's table logic (services/gateway/static/js/files.js), run by `node --test`.

import assert from "node:assert/strict";
import { test } from "node:test";

import { FileTable, formatSize, isRaw, utTime } from "../../../../services/gateway/static/js/files.js";

const NO_FILTER = { program: "", instrument: "", level: "", state: "", search: "" };
const file = (id, extra = {}) => ({ archive_id: id, mission: "KECK", propid: "P1", version: 1, ...extra });

test("the table keeps each file's latest version, filters by every field and searches words in any order", () => {
  const table = new FileTable();
  table.upsert(file("KOA1", { instrument_name: "HIRES", level: 0, target_name: "M 31", state: "new" }));
  table.upsert(file("KOA2", { instrument_name: "KCWI", level: 1, propid: "P2", state: "new" }));
  table.upsert(file("KOA1", { instrument_name: "HIRES", level: 0, target_name: "M 31", state: "public" }));
  const ids = (filters) => table.shown({ ...NO_FILTER, ...filters }, { column: "archive_id" }).map((f) => f.archive_id);
  assert.deepEqual(ids({}), ["KOA1", "KOA2"]);
  assert.deepEqual(ids({ state: "public" }), ["KOA1"]);
  assert.deepEqual(ids({ program: "KECK/P2" }), ["KOA2"]);
  assert.deepEqual(ids({ level: "0" }), ["KOA1"]);
  assert.deepEqual(ids({ search: "31 hires" }), ["KOA1"]);
  assert.deepEqual([...table.levels].sort(), ["0", "1"]);
  table.keepPrograms([{ mission: "KECK", propid: "P2" }]);
  assert.deepEqual(ids({}), ["KOA2"]);
});

test("sorting puts missing values last in both directions and numbers in numeric order", () => {
  const table = new FileTable();
  for (const [id, size] of [["A", 900], ["B", null], ["C", 10_000], ["D", 80]]) table.upsert(file(id, { size_bytes: size }));
  const order = (descending) => table.shown(NO_FILTER, { column: "size_bytes", descending }).map((f) => f.archive_id);
  assert.deepEqual(order(false), ["D", "A", "C", "B"]);
  assert.deepEqual(order(true), ["C", "A", "D", "B"]);
});

test("the note of other nights names the latest night and counts its files once each", () => {
  const table = new FileTable();
  assert.equal(table.otherNight(), null);
  table.noteOtherNight(file("X1", { night: "2026-11-30" }));
  table.noteOtherNight(file("X1", { night: "2026-11-30" }));
  table.noteOtherNight(file("X2", { night: "2026-11-30" }));
  table.noteOtherNight(file("X3", { night: "2026-11-28" }));
  assert.deepEqual(table.otherNight(), { night: "2026-11-30", count: 2 });
  table.clear();
  assert.equal(table.otherNight(), null);
});

test("raw is level 0 or a raw product; sizes and UT times read as the page shows them", () => {
  assert.ok(isRaw({ level: 0 }));
  assert.ok(isRaw({ level: "1b", product: "UNCAL" }));
  assert.ok(!isRaw({ level: 2, product: "cal" }));
  assert.equal(formatSize(999), "999 B");
  assert.equal(formatSize(1_500_000), "1.5 MB");
  // A site's night spans two UT dates: the date goes with the time.
  assert.deepEqual(utTime("2026-11-30T23:15:02.5Z"), {
    iso: "2026-11-30T23:15:02.500Z",
    text: "11-30 23:15:02",
    title: "2026-11-30 23:15:02 UT",
  });
  assert.equal(utTime(null), null);
});
