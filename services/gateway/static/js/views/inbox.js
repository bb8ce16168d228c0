// The inbox: the in-page notices of the person's "on this page" subscriptions, newest first. A notice is marked
// read when it is opened; "Mark all read" marks every one. Its files download as the files view's do.

import { html, useEffect, useState } from "../../vendor/preact-htm.js";
import { formatSize } from "../files.js";
import { TRIGGERS } from "../subscriptions.js";

const PAGE_SIZE = 50;
const TRIGGER_NAMES = Object.fromEntries(TRIGGERS);

/** ``session``: js/session.js (its ``unread`` is the masthead's badge); ``onSignOut(reason)``. */
export function InboxView({ session, onSignOut }) {
  const { api } = session;
  const [inbox, setInbox] = useState({ loaded: false, notices: [], more: false });
  const [result, setResult] = useState({ message: "", error: "" });
  const [reloads, setReloads] = useState(0);

  const refused = (err, what) => {
    if (err.status === 401) onSignOut(`Signed out: ${err.message}`);
    else setResult({ message: "", error: `${what}: ${err.message}` });
  };

  // Loaded when the view opens, after "mark all read", and when the badge's count changes (a notice arrived).
  useEffect(() => {
    let current = true;
    api.inbox({ limit: PAGE_SIZE }).then(
      (body) => {
        if (!current) return;
        setInbox({ loaded: true, notices: body.notices, more: body.notices.length === PAGE_SIZE });
        session.noteUnread(body.unread);
      },
      (err) => {
        if (!current) return;
        setInbox({ loaded: true, notices: [], more: false });
        refused(err, "Cannot read your inbox");
      },
    );
    return () => {
      current = false;
    };
  }, [reloads, session.unread]);

  const older = async () => {
    const last = inbox.notices[inbox.notices.length - 1];
    try {
      const body = await api.inbox({ limit: PAGE_SIZE, before: last.id });
      setInbox({ loaded: true, notices: [...inbox.notices, ...body.notices], more: body.notices.length === PAGE_SIZE });
    } catch (err) {
      refused(err, "Cannot read older notices");
    }
  };
  const markAll = async () => {
    try {
      const answer = await api.markRead({ all: true });
      session.noteUnread(answer.unread);
      setResult({ message: "Every notice is marked read.", error: "" });
      setReloads((n) => n + 1);
    } catch (err) {
      refused(err, "Could not mark the notices read");
    }
  };
  const opened = async (notice) => {
    if (notice.read) return;
    setInbox((box) => ({ ...box, notices: box.notices.map((n) => (n.id === notice.id ? { ...n, read: true } : n)) }));
    try {
      const answer = await api.markRead({ ids: [notice.id] });
      session.noteUnread(answer.unread);
    } catch (err) {
      refused(err, "Could not mark the notice read");
    }
  };

  const unread = inbox.notices.some((n) => !n.read) || session.unread > 0;
  return html`
    <section id="inbox-view" class="panel" aria-labelledby="inbox-title">
      <h2 id="inbox-title">Inbox</h2>
      <p id="inbox-message" class="message" role="status" data-testid="inbox-message"
         hidden=${!result.message}>${result.message}</p>
      <p id="inbox-error" class="error" role="alert" data-testid="inbox-error"
         hidden=${!result.error}>${result.error}</p>
      ${inbox.loaded && inbox.notices.length > 0 &&
      html`<p><button type="button" class="secondary" data-testid="mark-all-read" disabled=${!unread}
                       onClick=${markAll}>Mark all read</button></p>`}
      ${!inbox.loaded && html`<p class="hint" role="status">Loading your notices…</p>`}
      ${inbox.loaded && inbox.notices.length === 0 && !result.error &&
      html`<p class="empty" data-testid="inbox-empty">No notices yet. Notices of subscriptions sent
          <em>On this page</em> arrive here; add one in <a href="#/subscriptions/new">Subscriptions</a>.</p>`}
      <ol class="notices" data-testid="notices">
        ${inbox.notices.map(
          (n) => html`<${Notice} key=${n.id} notice=${n} onOpen=${opened}
                                 onDownload=${(file) => session.downloads.enqueue(file)} />`,
        )}
      </ol>
      ${inbox.more &&
      html`<p><button type="button" class="secondary" data-testid="older-notices" onClick=${older}>Older
          notices</button></p>`}
    </section>
  `;
}

/** One notice, closed to its subject line; opening it shows its files (and marks it read). */
function Notice({ notice, onOpen, onDownload }) {
  const when = new Date(notice.created_at);
  const program = `${notice.mission}/${notice.propid}`;
  return html`
    <li class=${`notice${notice.read ? "" : " unread"}`} data-notice-id=${notice.id} data-read=${String(notice.read)}
        data-testid="notice">
      <details onToggle=${(e) => e.currentTarget.open && onOpen(notice)}>
        <summary>
          <span class="notice-subject" data-testid="notice-subject">${notice.subject}</span>
          <span class="notice-meta">
            ${!notice.read && html`<span class="badge-new">Unread</span>`}
            <span class="trigger">${TRIGGER_NAMES[notice.trigger] || notice.trigger}</span>
            <time datetime=${notice.created_at} title=${when.toISOString()}>${when.toLocaleString()}</time>
          </span>
        </summary>
        <dl class="notice-facts">
          <dt>Program</dt><dd>${program}${notice.title ? `: ${notice.title}` : ""}</dd>
          <dt>Level</dt><dd>${notice.level}</dd>
          ${notice.obsets && notice.obsets.length > 0 && html`<dt>Obsets</dt><dd>${notice.obsets.join(", ")}</dd>`}
          ${(notice.repro || []).length > 0 &&
          html`<dt>Why</dt><dd>${notice.repro.map((r) => r.software_version || "").filter(Boolean).join(", ") ||
            "reprocessed"}</dd>`}
        </dl>
        <ul class="notice-files" data-testid="notice-files">
          ${(notice.files || []).map(
            (f) => html`<li key=${`${f.archive_id}@${f.version}`} data-archive-id=${f.archive_id}>
              <span class="file-id">${f.archive_id}${f.version > 1 ? ` v${f.version}` : ""}</span>
              <span class="hint">${formatSize(f.size_bytes)}</span>
              ${f.sha256 && html`<code class="hint" title=${`sha256 ${f.sha256}`}>${`sha256 ${f.sha256.slice(0, 12)}…`}</code>`}
              <button type="button" class="secondary" data-testid="notice-download"
                      aria-label=${`Download ${f.archive_id}`} onClick=${() => onDownload(f)}>Download</button>
            </li>`,
          )}
        </ul>
      </details>
    </li>
  `;
}
