// The files of a night: filters, the download choice, the note of other nights' new files, and the table.

import { Component, html, useEffect, useRef } from "../../vendor/preact-htm.js";
import { STATES, compareText, formatNumber, formatSize, utTime } from "../files.js";
import { programKey } from "../programs.js";
import { hashOf } from "../router.js";
import { Cell } from "./cell.js";

const COLUMNS = [
  ["archive_id", "Archive ID"],
  ["program", "Program"],
  ["original_filename", "Original name"],
  ["instrument_name", "Instrument"],
  ["level", "Level"],
  ["target_name", "Target"],
  ["observed_at", "UT time"],
  ["t_exptime", "Exposure", "number"],
  ["size_bytes", "Size", "number"],
  ["state", "State"],
];

/** Filters and sort of the files view: kept by the session, so they outlive a visit to another view. */
export function filesViewState() {
  return {
    filters: { program: "", instrument: "", level: "", state: "", search: "" },
    sort: { column: "observed_at", descending: true },
  };
}

/** ``session``: js/session.js; ``view``: filesViewState(); ``onChange()``: re-render. */
export function FilesView({ session, view, onChange }) {
  const { table, downloads } = session;
  const shown = table.shown(view.filters, view.sort);
  const total = table.files.size;
  const count =
    total === 0
      ? "No files yet"
      : shown.length === total
        ? `${total} file${total === 1 ? "" : "s"}`
        : `Showing ${shown.length} of ${total} files`;
  const setFilter = (name) => (event) => {
    view.filters = { ...view.filters, [name]: event.currentTarget.value };
    onChange();
  };
  const sortBy = (column) => {
    const { sort } = view;
    view.sort = sort.column === column ? { column, descending: !sort.descending } : { column, descending: false };
    onChange();
  };
  const download = (file) => downloads.enqueue(file);
  const other = table.otherNight();
  const programs = session.programs.map((p) => [programKey(p), programKey(p)]);
  const instruments = [...table.instruments].sort(compareText).map((n) => [n, n]);
  const levels = [...table.levels].sort(compareText).map((l) => [l, `Level ${l}`]);
  return html`
    <section id="files-view" class="panel" aria-labelledby="files-title">
      <h2 id="files-title">Files of the night</h2>

      <form id="filters" class="filters" role="search" aria-label="Filter the files"
            onSubmit=${(event) => event.preventDefault()}>
        <div class="field">
          <label for="night">Night</label>
          <${NightInput} night=${session.night} onChoose=${(night) => session.chooseNight(night)} />
        </div>
        <${FilterSelect} id="filter-program" label="Program" all="All programs" entries=${programs}
                         value=${view.filters.program} onChange=${setFilter("program")} />
        <${FilterSelect} id="filter-instrument" label="Instrument" all="All instruments" entries=${instruments}
                         value=${view.filters.instrument} onChange=${setFilter("instrument")} />
        <${FilterSelect} id="filter-level" label="Level" all="All levels" entries=${levels}
                         value=${view.filters.level} onChange=${setFilter("level")} />
        <${FilterSelect} id="filter-state" label="State" all="All states" entries=${Object.entries(STATES)}
                         value=${view.filters.state} onChange=${setFilter("state")} />
        <div class="field field-wide">
          <label for="search">Search</label>
          <input id="search" type="search" placeholder="archive ID, file name, target…" autocomplete="off"
                 data-testid="search" value=${view.filters.search} onInput=${setFilter("search")} />
        </div>
        <div class="field">
          <label for="auto-download">Download new files</label>
          <select id="auto-download" aria-describedby="auto-download-help" data-testid="auto-download"
                  value=${downloads.mode}
                  onChange=${(event) => {
                    downloads.mode = event.currentTarget.value;
                    onChange();
                  }}>
            <option value="none">None</option>
            <option value="raw">Raw</option>
            <option value="reduced">Reduced</option>
          </select>
        </div>
      </form>

      <${NotifyProgram} program=${notifyAbout(session.programs, view.filters.program)} />
      <${DownloadHelp} />

      <p class="status-line">
        <span id="file-count" data-testid="file-count" aria-live="polite">${count}</span>
        ${" "}
        <span id="download-status" data-testid="download-status" aria-live="polite">${downloads.status()}</span>
      </p>
      <p id="other-night" class="other-night" data-testid="other-night" aria-live="polite" hidden=${!other}>
        <span id="other-night-text">${other && otherNightText(other)}</span>
        ${" "}
        <button type="button" id="show-other-night" data-testid="show-other-night"
                onClick=${() => other && session.chooseNight(other.night)}>Show that night</button>
      </p>

      <div class="table-wrap">
        <table id="files" class="files" data-testid="files-table">
          <caption class="visually-hidden">Files of the night; select a column heading to sort by it</caption>
          <thead>
            <tr>
              ${COLUMNS.map(
                ([column, label, className]) => html`
                  <th key=${column} scope="col" data-column=${column} class=${className}
                      aria-sort=${view.sort.column === column ? (view.sort.descending ? "descending" : "ascending") : undefined}>
                    <button type="button" onClick=${() => sortBy(column)}>${label}<span class="sort-mark"
                      aria-hidden="true"></span></button>
                  </th>`,
              )}
              <th scope="col"><span class="visually-hidden">Actions</span></th>
            </tr>
          </thead>
          <tbody id="file-rows" data-testid="file-rows">
            ${shown.map((file) => html`<${FileRow} key=${file.archive_id} file=${file} onDownload=${download} />`)}
          </tbody>
        </table>
      </div>
      <p id="empty" class="empty" data-testid="empty" hidden=${total !== 0}>No files of your programs for this night
        yet. New files appear here as soon as they are archived.</p>
    </section>
  `;
}

function otherNightText({ night, count }) {
  return `${count} new file${count === 1 ? "" : "s"} of the night of ${night} ${count === 1 ? "is" : "are"} not shown.`;
}

/** The night field is not bound to the state while the user types in it: a half-typed date has no value, and a
 * render meanwhile would wipe it. It takes the session's night when that changes. */
function NightInput({ night, onChoose }) {
  const input = useRef(null);
  useEffect(() => {
    if (input.current.value !== night) input.current.value = night;
  }, [night]);
  return html`<input id="night" type="date" required data-testid="night" ref=${input}
    title="The observing night at the site, by the local date on which it began (noon to noon)"
    onChange=${(event) => onChoose(event.currentTarget.value)} />`;
}

/** A filter's select; the user's choice stays, even when no file matches it any more. */
function FilterSelect({ id, label, all, entries, value, onChange }) {
  const options = value && !entries.some(([v]) => v === value) ? [...entries, [value, value]] : entries;
  return html`
    <div class="field">
      <label for=${id}>${label}</label>
      <select id=${id} data-testid=${id} value=${value} onChange=${onChange}>
        <option value="">${all}</option>
        ${options.map(([v, text]) => html`<option key=${v} value=${v}>${text}</option>`)}
      </select>
    </div>
  `;
}

/** The program a "Notify me" is about: the one the filter chose, or the user's only one. */
function notifyAbout(programs, chosen) {
  if (chosen) return programs.find((p) => programKey(p) === chosen) || null;
  return programs.length === 1 ? programs[0] : null;
}

/** The program's "Notify me": the subscription form, filled in with the program. */
function NotifyProgram({ program }) {
  if (!program) return null;
  const key = programKey(program);
  return html`<p class="notify-program"><a href=${hashOf("subscriptions", "new", { mission: program.mission, propid: program.propid })}
    data-testid="notify-program">${`Notify me about ${key}`}</a> when its data are new, reprocessed or made
    public.</p>`;
}

function DownloadHelp() {
  return html`
    <details class="help" id="auto-download-help">
      <summary>How downloads work</summary>
      <p>Every row has a <em>Download</em> button. With <em>Download new files</em> set to <em>Raw</em> or${" "}
        <em>Reduced</em>, files that arrive while this page is open (and files missed while the connection was
        down) are downloaded by themselves; files already listed when you open the page or change night are
        not, nor files that only became public.</p>
      <p><strong>Raw</strong> means straight from the instrument: processing level <code>0</code>, or a
        product named <code>raw</code> or <code>uncal</code> (JWST's uncalibrated level <code>1b</code>).${" "}
        <strong>Reduced</strong> is every other file: quick-look and science products of the pipelines
        (Keck levels 1 and 2, JWST <code>2a</code>, <code>2b</code>, <code>3</code>).</p>
      <p>Files are downloaded one at a time, in the order they arrive, straight to your browser's download
        folder. Your browser may ask once whether this site may download several files.</p>
    </details>
  `;
}

/** One file's row: rendered again only when its file changes (a backlog of thousands stays cheap). */
class FileRow extends Component {
  shouldComponentUpdate(next) {
    return next.file !== this.props.file;
  }

  render({ file, onDownload }) {
    const time = utTime(file.observed_at);
    return html`
      <tr data-archive-id=${file.archive_id} data-state=${file.state || ""} data-testid="file-row">
        <th scope="row" data-label="Archive ID" data-column="archive_id">${file.archive_id}${file.version > 1 &&
          html`<span class="version">${` v${file.version}`}</span>`}</th>
        <${Cell} label="Program" column="program" text=${programKey(file)} />
        <${Cell} label="Original name" column="original_filename" text=${file.original_filename} />
        <${Cell} label="Instrument" column="instrument_name" text=${file.instrument_name} />
        <${Cell} label="Level" column="level" text=${file.level} />
        <${Cell} label="Target" column="target_name" text=${file.target_name} />
        <td data-label="UT time" data-column="observed_at">${time &&
          html`<time datetime=${time.iso} title=${time.title}>${time.text}</time>`}</td>
        <${Cell} label="Exposure" column="t_exptime" className="number"
                 text=${file.t_exptime == null ? "" : `${formatNumber(file.t_exptime)} s`} />
        <${Cell} label="Size" column="size_bytes" className="number" text=${formatSize(file.size_bytes)} />
        <td data-label="State" data-column="state">
          <span class=${`state state-${file.state}`}>${STATES[file.state] || file.state || ""}</span>
        </td>
        <td data-label="Download" data-column="actions" class="actions">
          <button type="button" data-action="download" data-testid="download-button"
                  aria-label=${`Download ${file.original_filename || file.archive_id}`}
                  onClick=${() => onDownload(file)}>Download</button>
        </td>
      </tr>
    `;
  }
}
