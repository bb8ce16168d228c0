// A program's members: everyone in it sees them; whoever the catalog allows adds, changes and removes them.
// What the viewer may do comes with the members (the catalog's access rule decides it): the view offers those
// actions and weighs no role itself.

import { html, useEffect, useRef, useState } from "../../vendor/preact-htm.js";
import { memberRights, programKey, roleName, roleWithArticle } from "../programs.js";
import { Cell } from "./cell.js";

/** ``session``: js/session.js; ``onSignOut(reason)``: the token was refused. */
export function MembersView({ session, onSignOut }) {
  const { api, programs } = session;
  const [chosen, setChosen] = useState("");
  // The last answer, with the program it is of: another program's rights never show beside this one's members.
  const [answer, setAnswer] = useState({ key: "", rights: null });
  const [result, setResult] = useState({ message: "", error: "" });
  const [reloads, setReloads] = useState(0);
  const program = programs.find((p) => programKey(p) === chosen) || programs[0] || null;
  const key = program ? programKey(program) : "";
  // Until the program's answer comes, nothing is offered and nothing is said to be read-only.
  const rights = program && answer.key === key ? answer.rights : null;
  const members = rights ? rights.members : [];

  // Loaded when the view opens, when another program is chosen, after a change, and when the user's programs
  // change (a role granted or withdrawn meanwhile).
  useEffect(() => {
    if (!program) {
      setAnswer({ key: "", rights: null });
      return undefined;
    }
    let current = true; // another program chosen meanwhile: this answer is no longer wanted
    api.members(program).then(
      (body) => current && setAnswer({ key, rights: memberRights(body) }),
      (err) => {
        if (!current) return;
        if (err.status === 401) {
          onSignOut(`Signed out: ${err.message}`);
          return;
        }
        setAnswer({ key: "", rights: null }); // not known: neither offered nor said to be read-only
        setResult({ message: "", error: err.message });
      },
    );
    return () => {
      current = false;
    };
  }, [key, programs, reloads]);

  const choose = (event) => {
    setResult({ message: "", error: "" });
    setChosen(event.currentTarget.value);
  };
  /** Runs a change, says how it went, and reloads the members; true when it was made. */
  const act = async (work, failure) => {
    let done = false;
    try {
      setResult({ message: await work(), error: "" });
      done = true;
    } catch (err) {
      if (err.status === 401) {
        onSignOut(`Signed out: ${err.message}`);
        return false;
      }
      setResult({ message: "", error: `${failure}: ${err.message}` });
    }
    setReloads((n) => n + 1);
    return done;
  };
  const grant = (username, role) =>
    act(async () => {
      const body = await api.grant(program, username, role);
      const verb = body && body.changed === false ? "already was" : "is now";
      return `${username} ${verb} ${roleWithArticle(role)} of ${key}.`;
    }, `Could not add ${username}`);
  const remove = (username) =>
    act(async () => {
      await api.revoke(program, username);
      return `${username} is no longer a member of ${key}.`;
    }, `Could not remove ${username}`);

  return html`
    <section id="members-view" class="panel" aria-labelledby="members-title">
      <h2 id="members-title">Program members</h2>
      <form id="members-program-form" class="filters" onSubmit=${(event) => event.preventDefault()}>
        <div class="field field-wide">
          <label for="members-program">Program</label>
          <select id="members-program" data-testid="members-program" value=${key} onChange=${choose}>
            ${programs.map(
              (p) => html`<option key=${programKey(p)} value=${programKey(p)}>
                ${`${programKey(p)} (${roleName(p.role)})`}</option>`,
            )}
          </select>
        </div>
      </form>
      <p id="members-message" class="message" role="status" data-testid="members-message"
         hidden=${!result.message}>${result.message}</p>
      <p id="members-error" class="error" role="alert" data-testid="members-error"
         hidden=${!result.error}>${result.error}</p>
      <div class="table-wrap">
        <table class="members" data-testid="members-table">
          <caption id="members-caption" class="visually-hidden">${program ? `Members of ${key}` : "Members"}</caption>
          <thead>
            <tr>
              <th scope="col">User</th>
              <th scope="col">Role</th>
              <th scope="col">Granted by</th>
              <th scope="col">Since</th>
              <th scope="col"><span class="visually-hidden">Actions</span></th>
            </tr>
          </thead>
          <tbody id="member-rows" data-testid="member-rows">
            ${members.map(
              (m) => html`<${MemberRow} key=${m.username} program=${key} member=${m}
                removable=${m.removable} onRemove=${remove} />`,
            )}
          </tbody>
        </table>
      </div>
      ${rights && rights.grantableRoles.length > 0 && html`<${GrantForm} key=${key} roles=${rights.grantableRoles}
        onGrant=${grant} onMissing=${() => setResult({ message: "", error: "Enter the username of the person to add." })} />`}
      <p id="members-readonly" class="hint" data-testid="members-readonly" hidden=${!rights || rights.manage}>Only
        the program's PI or an administrator can add or remove members.</p>
    </section>
  `;
}

function MemberRow({ program, member, removable, onRemove }) {
  // Two steps: the first press asks, the second removes (no modal dialog to dismiss).
  const [confirming, setConfirming] = useState(false);
  const [busy, setBusy] = useState(false);
  const name = member.username;
  const press = async () => {
    if (!confirming) {
      setConfirming(true);
      return;
    }
    setBusy(true);
    await onRemove(name);
    setBusy(false);
    setConfirming(false);
  };
  return html`
    <tr data-username=${name} data-role=${member.role} data-testid="member-row">
      <th scope="row" data-label="User">${name}</th>
      <${Cell} label="Role" column="role" text=${roleName(member.role)} />
      <${Cell} label="Granted by" column="granted_by" text=${member.granted_by || "the archive"} />
      <${Cell} label="Since" column="granted_at" text=${member.granted_at ? String(member.granted_at).slice(0, 10) : ""} />
      <td data-label="Actions" data-column="actions" class="actions">
        ${removable &&
        html`<button type="button" data-action="remove" disabled=${busy} onClick=${press}
                 data-testid=${confirming ? "confirm-remove-member" : "remove-member"}
                 aria-label=${`${confirming ? "Confirm: remove" : "Remove"} ${name} from ${program}`}>
            ${confirming ? `Confirm: remove ${name}` : "Remove"}</button>`}
      </td>
    </tr>
  `;
}

const ROLE_OPTIONS = { collaborator: "Collaborator", coi: "Co-investigator", pi: "PI" };

/** ``roles``: those the catalog lets the viewer grant, the first one chosen at first. */
function GrantForm({ roles, onGrant, onMissing }) {
  const [username, setUsername] = useState("");
  const [chosenRole, setRole] = useState(roles[0]);
  const role = roles.includes(chosenRole) ? chosenRole : roles[0]; // the rights may change under the form
  const [busy, setBusy] = useState(false);
  const field = useRef(null);
  const submit = async (event) => {
    event.preventDefault();
    const name = username.trim().toLowerCase();
    if (!name) {
      onMissing();
      field.current.focus();
      return;
    }
    setBusy(true);
    try {
      if (await onGrant(name, role)) setUsername("");
    } finally {
      setBusy(false);
    }
  };
  return html`
    <form id="grant-form" class="grant-form" data-testid="grant-form" onSubmit=${submit}>
      <fieldset>
        <legend>Add a member or change a role</legend>
        <div class="field">
          <label for="grant-username">Username</label>
          <input id="grant-username" name="username" required autocomplete="off" spellcheck="false"
                 data-testid="grant-username" ref=${field} value=${username}
                 onInput=${(event) => setUsername(event.currentTarget.value)} />
        </div>
        <div class="field">
          <label for="grant-role">Role</label>
          <select id="grant-role" name="role" data-testid="grant-role" value=${role}
                  onChange=${(event) => setRole(event.currentTarget.value)}>
            ${roles.map((r) => html`<option key=${r} value=${r}>${ROLE_OPTIONS[r] || r}</option>`)}
          </select>
        </div>
        <button type="submit" data-testid="grant-submit" disabled=${busy}>Grant</button>
      </fieldset>
    </form>
  `;
}
