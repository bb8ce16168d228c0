// A table cell as both tables write it: the label shows on a phone, where rows become cards.

import { html } from "../../vendor/preact-htm.js";

export function Cell({ label, column, text, className }) {
  return html`<td data-label=${label} data-column=${column} class=${className}>${text ?? ""}</td>`;
}
