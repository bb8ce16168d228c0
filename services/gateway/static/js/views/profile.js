// The user's programs, and what they let the user see.

import { html } from "../../vendor/preact-htm.js";
import { programKey, roleName } from "../programs.js";

export function Profile({ programs, me }) {
  const count = programs.length;
  const admin = me && me.is_admin ? " You are an administrator: you see every program." : "";
  const summary =
    (count === 0 ? "You are not a member of any program yet." : `You see the files of ${count} program${count === 1 ? "" : "s"}.`) +
    admin;
  return html`
    <section class="panel profile" aria-labelledby="profile-title">
      <h2 id="profile-title">Your programs</h2>
      <p id="profile-summary" data-testid="profile-summary">${summary}</p>
      <ul id="program-list" class="program-list" data-testid="program-list">
        ${programs.map(
          (p) => html`<li key=${programKey(p)} data-program=${programKey(p)}>
            ${`${programKey(p)}${p.title ? `: ${p.title}` : ""} (${roleName(p.role)})`}</li>`,
        )}
      </ul>
    </section>
  `;
}
