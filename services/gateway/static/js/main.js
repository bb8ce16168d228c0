// The observer page: sign in with an API token, follow a night's files over the gateway's WebSocket
// (services/gateway/PROTOCOL.md), download them, manage a program's members, subscribe to notices and read
// them. Native ES modules, no build step: this module signs in and out and routes; each view is a module of
// js/views/.

import { html, render, useCallback, useEffect, useReducer, useRef, useState } from "../vendor/preact-htm.js";
import { Api } from "./api.js";
import { navigate, useRoute } from "./router.js";
import { Session } from "./session.js";
import { FilesView, filesViewState } from "./views/files.js";
import { Masthead } from "./views/masthead.js";
import { MembersView } from "./views/members.js";
import { InboxView } from "./views/inbox.js";
import { Profile } from "./views/profile.js";
import { SignIn } from "./views/signin.js";
import { SubscriptionsView } from "./views/subscriptions.js";

const TOKEN_KEY = "skyport.token";
const SIGNED_OUT = { kind: "signed-out", text: "Signed out" };
const VIEWS = [
  ["files", "Files"],
  ["members", "Members"],
  ["subscriptions", "Subscriptions"],
  ["inbox", "Inbox"],
];

/** A redraw at most once a frame: a backlog of many messages becomes one render. The timer covers hidden tabs,
 * which get no frames. */
function useFrameRedraw() {
  const [, redraw] = useReducer((n) => n + 1, 0);
  const pending = useRef(false);
  return useCallback(() => {
    if (pending.current) return;
    pending.current = true;
    const run = () => {
      if (!pending.current) return;
      pending.current = false;
      redraw();
    };
    requestAnimationFrame(run);
    setTimeout(run, 100);
  }, []);
}

function Page() {
  const [session, setSession] = useState(null);
  const [signInError, setSignInError] = useState("");
  const current = useRef(null); // the session, for the callbacks of the stream and the downloads
  const filesView = useRef(filesViewState());
  const route = useRoute();
  const changed = useFrameRedraw();

  const signOut = useCallback((reason) => {
    if (current.current) current.current.stop();
    current.current = null;
    sessionStorage.removeItem(TOKEN_KEY);
    setSession(null);
    setSignInError(reason || "");
  }, []);

  const signIn = useCallback(async (token, { remembered }) => {
    let me;
    try {
      me = await new Api(token).me();
    } catch (err) {
      if (err.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        setSignInError(remembered ? "Your session has ended: sign in again." : `This token was refused: ${err.message}`);
      } else {
        setSignInError(`Cannot sign in: ${err.message}`);
      }
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    const started = new Session(token, me, { onChange: changed, onSignOut: signOut });
    current.current = started;
    filesView.current = filesViewState();
    setSignInError("");
    setSession(started);
    started.start();
  }, []);

  useEffect(() => {
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) signIn(saved, { remembered: true });
    // Back on the network: no need to wait for the back-off.
    const online = () => current.current && current.current.link.online();
    window.addEventListener("online", online);
    return () => window.removeEventListener("online", online);
  }, []);

  return html`
    <a class="skip" href="#main">Skip to content</a>
    <${Masthead} connection=${session ? session.connection : SIGNED_OUT} me=${session && session.me}
                 unread=${session ? session.unread : null} onSignOut=${signOut} />
    <main id="main">
      ${session
        ? html`
            <div id="app">
              <${Profile} programs=${session.programs} me=${session.me} />
              <nav class="views" aria-label="Views">
                ${VIEWS.map(
                  ([name, label]) => html`
                    <button key=${name} type="button" id=${`show-${name}`} aria-controls=${`${name}-view`}
                            aria-pressed=${String(route.name === name)} data-testid=${`show-${name}`}
                            onClick=${() => navigate(name)}>${label}</button>
                  `,
                )}
              </nav>
              <${RouteView} route=${route} session=${session} filesView=${filesView.current} onChange=${changed}
                            onSignOut=${signOut} />
            </div>
          `
        : html`<${SignIn} error=${signInError} onSignIn=${(token) => signIn(token, { remembered: false })}
                          onMissing=${setSignInError} />`}
    </main>
  `;
}

/** The view of the route. */
function RouteView({ route, session, filesView, onChange, onSignOut }) {
  switch (route.name) {
    case "members":
      return html`<${MembersView} session=${session} onSignOut=${onSignOut} />`;
    case "subscriptions":
      return html`<${SubscriptionsView} session=${session} route=${route} onSignOut=${onSignOut} />`;
    case "inbox":
      return html`<${InboxView} session=${session} onSignOut=${onSignOut} />`;
    default:
      return html`<${FilesView} session=${session} view=${filesView} onChange=${onChange} />`;
  }
}

render(html`<${Page} />`, document.getElementById("page"));
