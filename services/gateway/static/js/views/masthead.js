// The masthead: the page's name, the stream's state, the inbox's unread count, and who is signed in.

import { html } from "../../vendor/preact-htm.js";

/** ``connection``: {kind, text}; ``me``: the body of GET /v1/me, or null when signed out; ``unread``: the inbox's
 * unread notices, or null when not known (no badge). */
export function Masthead({ connection, me, unread, onSignOut }) {
  const name = me && (me.display_name ? `${me.display_name} (${me.username})` : me.username);
  const count = unread == null ? "" : `${unread} unread notice${unread === 1 ? "" : "s"}`;
  return html`
    <header class="masthead">
      <h1>Skyport <span class="subtitle">tonight's files</span></h1>
      <p id="connection" class="connection" data-testid="connection-state" data-state=${connection.kind}
         role="status" aria-live="polite">${connection.text}</p>
      <div id="whoami" class="whoami" hidden=${!me}>
        ${me && unread != null &&
        html`<a href="#/inbox" class="inbox-link" data-testid="inbox-link" aria-label=${`Inbox: ${count}`}>Inbox
            <span class="badge" data-testid="unread-count" data-unread=${unread} hidden=${unread === 0}
                  aria-hidden="true">${unread}</span></a>
          <span class="visually-hidden" role="status">${unread > 0 ? count : ""}</span>`}
        <span>Signed in as <strong id="user-name" data-testid="user-name">${name}</strong></span>
        <button type="button" id="sign-out" data-testid="sign-out" onClick=${() => onSignOut()}>Sign out</button>
      </div>
    </header>
  `;
}
