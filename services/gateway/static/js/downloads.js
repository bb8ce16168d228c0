// Downloads, one file at a time in the order asked: by a row's button, or by themselves as new files arrive.

import { Api } from "./api.js";
import { isRaw } from "./files.js";

// An <a download> gives no signal when the browser has finished a file, so the queue spaces the starts: one
// file is handed to the browser at a time, and a burst of arrivals does not become a burst of requests.
const DOWNLOAD_SPACING_MS = 750;

function downloadKey(file) {
  return `${file.archive_id}@${file.version}`;
}

export class DownloadQueue {
  /** ``onChange()``: the status changed; ``onSignOut(reason)``: the token was refused. */
  constructor(api, { onChange, onSignOut }) {
    this.api = api;
    this.onChange = onChange;
    this.onSignOut = onSignOut;
    this.mode = "none"; // which new files download by themselves: "none", "raw" or "reduced"
    this.queue = []; // [{archive_id, version, original_filename}]
    this.current = null;
    this.busy = false;
    this.stopped = false;
    this.last = "";
    this.seen = new Set(); // "archive_id@version" handed to the browser (or queued) in this tab
  }

  /** A file new to this page: downloaded by itself when it is of the kind asked for. */
  arrived(file) {
    if (this.mode === "none" || file.state === "public") return; // becoming public is not a new file
    if ((this.mode === "raw") !== isRaw(file)) return;
    if (this.seen.has(downloadKey(file))) return;
    this.enqueue(file);
  }

  enqueue(file) {
    const item = { archive_id: file.archive_id, version: file.version, original_filename: file.original_filename };
    const key = downloadKey(item);
    const pending = this.queue.some((q) => downloadKey(q) === key);
    if (pending || (this.current && downloadKey(this.current) === key)) return;
    this.seen.add(key);
    this.queue.push(item);
    this.onChange();
    this.pump();
  }

  stop() {
    this.stopped = true;
    this.queue = [];
  }

  /** What the status line says: the file being downloaded, else the last outcome. */
  status() {
    if (!this.current) return this.last;
    const waiting = this.queue.length;
    const name = this.current.original_filename || this.current.archive_id;
    return `Downloading ${name}${waiting ? ` (${waiting} waiting)` : ""}`;
  }

  async pump() {
    if (this.busy) return;
    this.busy = true;
    try {
      while (this.queue.length > 0 && !this.stopped) {
        const item = this.queue.shift();
        this.current = item;
        this.onChange();
        try {
          // A ticket for each file: good once, it lets the browser fetch the file itself and stream it to disk.
          const ticket = await this.api.ticket();
          save(item, ticket);
          this.last = `Sent ${item.original_filename || item.archive_id} to your downloads.`;
        } catch (err) {
          if (err.status === 401) {
            this.onSignOut(`Signed out: ${err.message}`);
            return;
          }
          this.last = `Could not download ${item.archive_id}: ${err.message}`;
        }
        await new Promise((resolve) => setTimeout(resolve, DOWNLOAD_SPACING_MS));
      }
    } finally {
      this.busy = false;
      this.current = null;
      this.onChange();
    }
  }
}

function save(item, ticket) {
  const anchor = document.createElement("a");
  anchor.href = Api.fileUrl(item.archive_id, item.version, ticket);
  anchor.download = item.original_filename || item.archive_id;
  anchor.hidden = true;
  document.body.append(anchor);
  anchor.click();
  anchor.remove();
}
