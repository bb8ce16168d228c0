// The night's files as the page holds them, and the table's filtering, sorting and formatting (no DOM here).

import { programKey } from "./programs.js";

export const STATES = { new: "New", reprocessed: "Reprocessed", public: "Public" };
const RAW_PRODUCTS = new Set(["raw", "uncal"]);

/** The files of the night shown: the latest "file" message of each archive ID, and what the filters offer. */
export class FileTable {
  constructor() {
    this.files = new Map(); // archive_id -> the latest file message's "file"
    this.instruments = new Set();
    this.levels = new Set();
    this.elsewhere = new Map(); // a chosen night's page: night -> archive IDs of its live files of other nights
  }

  upsert(file) {
    this.files.set(file.archive_id, file);
    if (file.instrument_name) this.instruments.add(file.instrument_name);
    if (file.level != null) this.levels.add(String(file.level));
  }

  /** Files of a program the user no longer belongs to go: nothing more of it arrives. */
  keepPrograms(programs) {
    const visible = new Set(programs.map(programKey));
    for (const [archiveId, file] of this.files) {
      if (!visible.has(programKey(file))) this.files.delete(archiveId);
    }
  }

  clear() {
    this.files.clear();
    this.instruments.clear();
    this.levels.clear();
    this.elsewhere.clear();
  }

  /** A live file of another night than the one shown: not listed (a reload would not list it), but said. */
  noteOtherNight(file) {
    if (typeof file.night !== "string" || typeof file.archive_id !== "string") return;
    const ids = this.elsewhere.get(file.night) || new Set();
    ids.add(file.archive_id);
    this.elsewhere.set(file.night, ids);
  }

  /** The latest other night with new files, and how many: {night, count}, or null. */
  otherNight() {
    const latest = [...this.elsewhere.keys()].sort().pop();
    return latest === undefined ? null : { night: latest, count: this.elsewhere.get(latest).size };
  }

  /** The files that pass ``filters``, in the order of ``sort`` ({column, descending}). */
  shown(filters, sort) {
    return [...this.files.values()].filter((file) => matches(file, filters)).sort((a, b) => compareFiles(a, b, sort));
  }
}

export function searchWords(text) {
  return text.toLowerCase().split(/\s+/).filter(Boolean);
}

/** ``f``: {program, instrument, level, state, search}; an empty value lets every file through. */
export function matches(file, f) {
  if (f.program && programKey(file) !== f.program) return false;
  if (f.instrument && file.instrument_name !== f.instrument) return false;
  if (f.level && String(file.level) !== f.level) return false;
  if (f.state && file.state !== f.state) return false;
  const words = searchWords(f.search || "");
  if (words.length) {
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
    if (!words.every((w) => text.includes(w))) return false;
  }
  return true;
}

const collator = new Intl.Collator("en", { numeric: true, sensitivity: "base" });

export function compareText(a, b) {
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

export function compareFiles(a, b, { column, descending }) {
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

/** Raw: straight from the instrument (level 0, or a product named raw or uncal); reduced: everything else. */
export function isRaw(file) {
  return String(file.level) === "0" || RAW_PRODUCTS.has(String(file.product || "").toLowerCase());
}

export function formatNumber(value) {
  return Number(value).toLocaleString("en", { maximumFractionDigits: 2 });
}

export function formatSize(bytes) {
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

/** The observation's UT instant: {iso, text, title}, or null. A site's night spans two UT dates (Keck's, from
 * 22:00 UT to 22:00 UT): the date always goes with the time. */
export function utTime(observedAt) {
  const when = new Date(observedAt);
  if (!observedAt || Number.isNaN(when.getTime())) return null;
  const iso = when.toISOString();
  return { iso, text: `${iso.slice(5, 10)} ${iso.slice(11, 19)}`, title: `${iso.slice(0, 10)} ${iso.slice(11, 19)} UT` };
}
