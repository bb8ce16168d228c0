// One signed-in token's life on the page: its API client, its stream, its files and its downloads. A new one
// is made at each sign-in and dropped at sign-out, so nothing of a session outlives it.

import { Api } from "./api.js";
import { DownloadQueue } from "./downloads.js";
import { FileTable } from "./files.js";
import { StreamLink } from "./link.js";
import { normalPrograms } from "./programs.js";

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
  }

  start() {
    this.link.start();
  }

  stop() {
    this.link.stop();
    this.downloads.stop();
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
        if (effect.fresh) this.downloads.arrived(effect.file);
        break;
      case "other-night":
        this.table.noteOtherNight(effect.file);
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
