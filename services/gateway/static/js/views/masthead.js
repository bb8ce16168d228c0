// The masthead: the page's name, the stream's state, and who is signed in.

import { html } from "../../vendor/preact-htm.js";

/** ``connection``: {kind, text}; ``me``: the body of GET /v1/me, or null when signed out. */
export function Masthead({ connection, me, onSignOut }) {
  const name = me && (me.display_name ? `${me.display_name} (${me.username})` : me.username);
  return html`
    <header class="masthead">
      <h1>Skyport <span class="subtitle">tonight's files</span></h1>
      <p id="connection" class="connection" data-testid="connection-state" data-state=${connection.kind}
         role="status" aria-live="polite">${connection.text}</p>
      <div id="whoami" class="whoami" hidden=${!me}>
        <span>Signed in as <strong id="user-name" data-testid="user-name">${name}</strong></span>
        <button type="button" id="sign-out" data-testid="sign-out" onClick=${() => onSignOut()}>Sign out</button>
      </div>
    </header>
  `;
}
