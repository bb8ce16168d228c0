// One signed-in token's life on the page: its API client, its stream, its files, its downloads and its inbox's
// unread count. A new one is made at each sign-in and dropped at sign-out, so nothing of a session outlives it.

import { Api } from "./api.js";
import { DownloadQueue } from "./downloads.js";
import { FileTable } from "./files.js";
import { StreamLink } from "./link.js";
import { normalPrograms } from "./programs.js";

const UNREAD_EVERY_MS = 60_000;
// The notifier decides on a file after the catalog has it (and the stream has shown it): the inbox's count is
// asked again a few times in the seconds after new files, not only once a minute.
const UNREAD_AFTER_FILES_MS = [2_000, 6_000, 15_000];

export class Session {
  /** ``me``: the body of GET /v1/me; ``onChange()``: re-render; ``onSignOut(reason)``: the token is refused. */
  constructor(token, me, { onChange, onSignOut }) {
    this.api = new Api(token);
    this.me = me;
    this.programs = normalPrograms(me.programs || []);
    this.connection = { kind: "connecting", text: "Connecting…" };
    this.night = ""; // the date shown in the night field: tonight's, from the stream's hello, or the one chosen
    this.table = new FileTable();
    this.onChange = onChange;
    this.onSignOut = onSignOut;
    this.downloads = new DownloadQueue(this.api, { onChange, onSignOut });
    this.link = new StreamLink(this.api, (effect) => this.apply(effect));
    this.unread = null; // unread in-page notices (the masthead's badge): null until known, or with no notifier
    this.timers = { every: null, soon: [] };
    this.stopped = false;
  }

  start() {
    this.link.start();
    this.refreshUnread();
    this.timers.every = setInterval(() => this.refreshUnread(), UNREAD_EVERY_MS);
  }

  stop() {
    this.stopped = true;
    this.link.stop();
    this.downloads.stop();
    clearInterval(this.timers.every);
    this.timers.soon.forEach(clearTimeout);
  }

  /** Asks the inbox how many notices are unread; a gateway without a notifier (503) shows no badge. */
  async refreshUnread() {
    try {
      const body = await this.api.inbox({ limit: 1 });
      this.noteUnread(body.unread);
    } catch (err) {
      if (this.stopped) return;
      if (err.status === 401) this.onSignOut(`Signed out: ${err.message}`);
      else if (err.status === 503 || err.status === 404) this.noteUnread(null);
      // Otherwise the count stays as it was, and the next look tries again.
    }
  }

  noteUnread(count) {
    if (this.stopped || count === this.unread) return;
    this.unread = count;
    this.onChange();
  }

  unreadSoon() {
    this.timers.soon.forEach(clearTimeout);
    this.timers.soon = UNREAD_AFTER_FILES_MS.map((ms) => setTimeout(() => this.refreshUnread(), ms));
  }

  chooseNight(night) {
    this.link.chooseNight(night);
  }

  apply(effect) {
    switch (effect.type) {
      case "status":
        this.connection = { kind: effect.kind, text: effect.text };
        break;
      case "programs":
        this.programs = normalPrograms(effect.programs);
        this.table.keepPrograms(this.programs);
        break;
      case "tonight":
      case "show-night":
        this.night = effect.night;
        break;
      case "file":
        this.table.upsert(effect.file);
        if (effect.fresh) {
          this.downloads.arrived(effect.file);
          this.unreadSoon();
        }
        break;
      case "other-night":
        this.table.noteOtherNight(effect.file);
        this.unreadSoon();
        break;
      case "clear-files":
        this.table.clear();
        break;
      case "sign-out":
        this.onSignOut(effect.reason);
        return;
      default:
        return;
    }
    this.onChange();
  }
}
