// Sign-in: the token stays in this tab's sessionStorage and is only ever sent in an Authorization header.

import { html, useEffect, useRef } from "../../vendor/preact-htm.js";

/** ``error``: why the last attempt failed, or ""; ``onSignIn(token)``. */
export function SignIn({ error, onSignIn, onMissing }) {
  const input = useRef(null);
  useEffect(() => input.current && input.current.focus(), [error]);
  const submit = (event) => {
    event.preventDefault();
    const token = input.current.value.trim();
    if (!token) {
      onMissing("Enter your API token.");
      return;
    }
    input.current.value = "";
    onSignIn(token);
  };
  return html`
    <section id="signin" class="panel" aria-labelledby="signin-title" data-testid="signin">
      <h2 id="signin-title">Sign in</h2>
      <form id="signin-form" class="signin-form" novalidate onSubmit=${submit}>
        <label for="token">API token</label>
        <input id="token" name="token" type="password" autocomplete="off" spellcheck="false" required
               aria-describedby="token-help" data-testid="token-input" ref=${input} />
        <button type="submit" data-testid="sign-in">Sign in</button>
        <p id="token-help" class="hint">Ask your archive for a token, or issue one with${" "}
          <code>${"skyport catalog issue-token <username>"}</code>. It is kept in this tab only, until you sign out
          or close it.</p>
        <p id="signin-error" class="error" role="alert" data-testid="signin-error" hidden=${!error}>${error}</p>
      </form>
    </section>
  `;
}
