// The person's subscriptions: the list, a form to add one (with a preview of what it would have sent before it
// is saved), the same form to edit one ("#/subscriptions/12", where emails link), and a delete that asks first.
// The notifier decides what is allowed and says why not; the view shows its words.

import { html, useEffect, useRef, useState } from "../../vendor/preact-htm.js";
import { navigate } from "../router.js";
import {
  CHANNELS,
  FREQUENCIES,
  TIMED,
  TRIGGERS,
  browserTimeZone,
  changeOf,
  defaultLevelText,
  describe,
  formOf,
  levelOrders,
  missing,
  newForm,
  previewText,
  requestOf,
} from "../subscriptions.js";

const PREVIEW_DELAY_MS = 400; // a preview once the user pauses, not one per keystroke

/** ``session``: js/session.js; ``route``: {name, id, params} (id "new", a subscription's id, or ""). */
export function SubscriptionsView({ session, route, onSignOut }) {
  const { api } = session;
  const [list, setList] = useState({ loaded: false, subscriptions: [] });
  const [levels, setLevels] = useState({}); // by mission; empty until known (the form then takes any text)
  const [result, setResult] = useState({ message: "", error: "" });
  const [reloads, setReloads] = useState(0);

  useEffect(() => {
    let current = true;
    api.subscriptions().then(
      (body) => current && setList({ loaded: true, subscriptions: (body && body.subscriptions) || [] }),
      (err) => {
        if (!current) return;
        if (err.status === 401) {
          onSignOut(`Signed out: ${err.message}`);
          return;
        }
        setList({ loaded: true, subscriptions: [] });
        setResult({ message: "", error: `Cannot read your subscriptions: ${err.message}` });
      },
    );
    return () => {
      current = false;
    };
  }, [reloads]);

  // The missions' level orders are configuration: asked once per visit. Without them the level is free text
  // (and the notifier's refusal of a wrong one names the mission's levels).
  useEffect(() => {
    let current = true;
    api.levels().then(
      (body) => current && setLevels(levelOrders(body)),
      () => undefined,
    );
    return () => {
      current = false;
    };
  }, []);

  const refused = (err, what) => {
    if (err.status === 401) onSignOut(`Signed out: ${err.message}`);
    else setResult({ message: "", error: `${what}: ${err.message}` });
  };
  const saved = (message) => {
    setResult({ message, error: "" });
    setReloads((n) => n + 1);
    navigate("subscriptions");
  };
  const remove = async (subscription) => {
    try {
      await api.deleteSubscription(subscription.subscription_id);
      setResult({ message: `Deleted your subscription to ${describe(subscription).what}.`, error: "" });
    } catch (err) {
      refused(err, "Could not delete the subscription");
    }
    setReloads((n) => n + 1);
  };

  const editing = /^[0-9]+$/.test(route.id)
    ? list.subscriptions.find((s) => String(s.subscription_id) === route.id)
    : null;
  let form = null;
  if (route.id === "new") {
    const initial = newForm(route.params, browserTimeZone());
    form = html`<${SubscriptionForm} key=${`new:${JSON.stringify(route.params)}`} api=${api} initial=${initial}
      programs=${session.programs} levels=${levels} onSaved=${saved} onRefused=${refused} />`;
  } else if (editing) {
    form = html`<${SubscriptionForm} key=${`edit:${route.id}`} api=${api} initial=${formOf(editing)}
      subscription=${editing} programs=${session.programs} levels=${levels} onSaved=${saved}
      onRefused=${refused} />`;
  }
  const unknown = route.id && route.id !== "new" && list.loaded && !editing;

  return html`
    <section id="subscriptions-view" class="panel" aria-labelledby="subscriptions-title">
      <h2 id="subscriptions-title">Subscriptions</h2>
      <p class="hint">Be told when the data of a program or of one file are new, first, reprocessed or made
        public: by email, on this page, or by a webhook, as it happens or in a digest.</p>
      <p id="subscriptions-message" class="message" role="status" data-testid="subscriptions-message"
         hidden=${!result.message}>${result.message}</p>
      <p id="subscriptions-error" class="error" role="alert" data-testid="subscriptions-error"
         hidden=${!result.error}>${result.error}</p>
      <p class="error" role="alert" data-testid="subscription-unknown" hidden=${!unknown}>You have no subscription
        ${route.id}: it may have been deleted. Your subscriptions are listed below.</p>
      ${form}
      ${!form &&
      html`<p><a class="button-link" href="#/subscriptions/new" data-testid="add-subscription">Add a subscription</a></p>`}
      <${SubscriptionList} loaded=${list.loaded} subscriptions=${list.subscriptions} adding=${Boolean(form)}
                           onRemove=${remove} />
    </section>
  `;
}

function SubscriptionList({ loaded, subscriptions, adding, onRemove }) {
  if (!loaded) return html`<p class="hint" role="status">Loading your subscriptions…</p>`;
  if (subscriptions.length === 0) {
    if (adding) return null; // the form is the way to make the first one: no need to say so below it
    return html`<p class="empty" data-testid="subscriptions-empty">You have no subscriptions yet. Choose${" "}
      <em>Add a subscription</em>, or <em>Notify me about</em> a program in the files view.</p>`;
  }
  return html`
    <div class="table-wrap">
      <table class="subscriptions" data-testid="subscription-table">
        <caption class="visually-hidden">Your subscriptions</caption>
        <thead>
          <tr>
            <th scope="col" data-column="what">About</th>
            <th scope="col" data-column="triggers">Tell me of</th>
            <th scope="col" data-column="level">Level</th>
            <th scope="col" data-column="frequency">When</th>
            <th scope="col" data-column="channel">How</th>
            <th scope="col"><span class="visually-hidden">Actions</span></th>
          </tr>
        </thead>
        <tbody data-testid="subscription-rows">
          ${subscriptions.map(
            (s) => html`<${SubscriptionRow} key=${s.subscription_id} subscription=${s} onRemove=${onRemove} />`,
          )}
        </tbody>
      </table>
    </div>
  `;
}

function SubscriptionRow({ subscription, onRemove }) {
  const [confirming, setConfirming] = useState(false);
  const [busy, setBusy] = useState(false);
  const words = describe(subscription);
  const press = async () => {
    if (!confirming) {
      setConfirming(true);
      return;
    }
    setBusy(true);
    await onRemove(subscription);
    setBusy(false);
    setConfirming(false);
  };
  return html`
    <tr data-subscription-id=${subscription.subscription_id} data-testid="subscription-row">
      <th scope="row" data-label="About">${words.what}</th>
      <td data-label="Tell me of" data-column="triggers">${words.triggers}</td>
      <td data-label="Level" data-column="level">${words.level}</td>
      <td data-label="When" data-column="frequency">${words.frequency}</td>
      <td data-label="How" data-column="channel">${words.channel}${words.stopped &&
        html`<span class="stopped">${` ${words.stopped}`}</span>`}</td>
      <td data-label="Actions" data-column="actions" class="actions">
        <a href=${`#/subscriptions/${subscription.subscription_id}`} data-testid="edit-subscription"
           aria-label=${`Edit the subscription to ${words.what}`}>Edit</a>
        ${" "}
        <button type="button" class=${confirming ? "danger" : "secondary"} disabled=${busy} onClick=${press}
                data-testid=${confirming ? "confirm-delete-subscription" : "delete-subscription"}
                aria-label=${`${confirming ? "Confirm: delete" : "Delete"} the subscription to ${words.what}`}>
          ${confirming ? "Confirm: delete" : "Delete"}</button>
        ${confirming &&
        html` <button type="button" class="secondary" onClick=${() => setConfirming(false)}
                      data-testid="cancel-delete-subscription">Keep it</button>`}
      </td>
    </tr>
  `;
}

/** The add and edit form: ``subscription`` (when editing) is the one kept; ``levels``: levelOrders(), {} when not
 * known; ``onSaved(message)``; ``onRefused(err, what)``. */
function SubscriptionForm({ api, initial, subscription, programs, levels, onSaved, onRefused }) {
  const [form, setForm] = useState(initial);
  const [preview, setPreview] = useState({ text: "", error: "", pending: false });
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  const heading = useRef(null);
  const editing = Boolean(subscription);
  const set = (name, value) => {
    setForm((f) => ({ ...f, [name]: value }));
    setError(""); // the refusal was of the values before this change
  };
  const field = (name) => (event) => set(name, event.currentTarget.value);
  const absent = missing(form);
  const body = JSON.stringify(requestOf(form));

  useEffect(() => heading.current && heading.current.focus(), []);

  // The preview follows the form: asked again when the user pauses, and an answer to older values is dropped.
  useEffect(() => {
    if (absent) {
      setPreview({ text: "", error: "", pending: false });
      return undefined;
    }
    let current = true;
    setPreview((p) => ({ ...p, pending: true }));
    const timer = setTimeout(() => {
      api.preview(JSON.parse(body)).then(
        (answer) => current && setPreview({ text: previewText(answer, form.channel), error: "", pending: false }),
        (err) => {
          if (!current) return;
          if (err.status === 401) onRefused(err, "");
          else setPreview({ text: "", error: `No preview: ${err.message}`, pending: false });
        },
      );
    }, PREVIEW_DELAY_MS);
    return () => {
      current = false;
      clearTimeout(timer);
    };
  }, [body, absent]);

  const submit = async (event) => {
    event.preventDefault();
    if (absent) {
      setError(absent);
      return;
    }
    setBusy(true);
    setError("");
    try {
      const made = editing
        ? await api.changeSubscription(subscription.subscription_id, changeOf(form))
        : await api.subscribe(requestOf(form));
      const what = describe(made).what;
      const secret = made.webhook_secret
        ? ` Your webhook's signing secret, shown this once (keep it now): ${made.webhook_secret}`
        : "";
      onSaved(`${editing ? "Saved your subscription to" : "Subscribed to"} ${what}.${secret}`);
    } catch (err) {
      if (err.status === 401) onRefused(err, "");
      else setError(`Could not save: ${err.message}`);
    } finally {
      setBusy(false);
    }
  };

  const order = levels[form.mission.trim().toUpperCase()] || null;
  // A kept level the configuration no longer lists stays choosable, so that editing does not change it unasked.
  const kept = order && form.minLevel && !order.levels.includes(form.minLevel) ? [form.minLevel] : [];
  const choices = order ? [...order.levels, ...kept] : [];
  const title = editing ? `Edit your subscription to ${describe(subscription).what}` : "New subscription";
  return html`
    <form id="subscription-form" class="subscription-form" data-testid="subscription-form" onSubmit=${submit}
          aria-labelledby="subscription-form-title" novalidate>
      <h3 id="subscription-form-title" tabindex="-1" ref=${heading}>${title}</h3>
      <${Target} form=${form} editing=${editing} programs=${programs} set=${set} field=${field} />

      <fieldset class="choices">
        <legend>Tell me when data are</legend>
        ${TRIGGERS.map(
          ([trigger, label]) => html`
            <label key=${trigger} class="choice">
              <input type="checkbox" name="triggers" value=${trigger} checked=${form.triggers[trigger]}
                     data-testid=${`trigger-${trigger}`}
                     onChange=${(e) => set("triggers", { ...form.triggers, [trigger]: e.currentTarget.checked })} />
              ${label}</label>`,
        )}
      </fieldset>

      <div class="form-row">
        ${form.target === "program" &&
        html`<div class="field">
            <label for="subscription-level">Level</label>
            ${order
              ? html`<select id="subscription-level" data-testid="subscription-level" value=${form.minLevel}
                             onChange=${field("minLevel")}>
                  <option value="">${defaultLevelText(order)}</option>
                  ${choices.map((l) => html`<option key=${l} value=${l}>${`Level ${l}`}</option>`)}
                </select>`
              : html`<input id="subscription-level" data-testid="subscription-level" value=${form.minLevel}
                            autocomplete="off" spellcheck="false" aria-describedby="subscription-level-help"
                            onInput=${field("minLevel")} />
                  <span id="subscription-level-help" class="field-help">Empty: the mission's default, or every
                    level</span>`}
          </div>
          <label class="choice or-above">
            <input type="checkbox" checked=${form.orAbove} data-testid="subscription-or-above"
                   onChange=${(e) => set("orAbove", e.currentTarget.checked)} />
            or above</label>`}
        <div class="field">
          <label for="subscription-frequency">How often</label>
          <select id="subscription-frequency" data-testid="subscription-frequency" value=${form.frequency}
                  onChange=${field("frequency")}>
            ${FREQUENCIES.map(([f, label]) => html`<option key=${f} value=${f}>${label}</option>`)}
          </select>
        </div>
        <div class="field" hidden=${!TIMED.has(form.frequency)}>
          <label for="subscription-time">At</label>
          <input id="subscription-time" type="time" required data-testid="subscription-time"
                 value=${form.timeOfDay} onInput=${(e) => e.currentTarget.value && set("timeOfDay", e.currentTarget.value)} />
        </div>
        <div class="field field-wide" hidden=${!TIMED.has(form.frequency)}>
          <label for="subscription-zone">Time zone</label>
          <input id="subscription-zone" list="time-zones" autocomplete="off" spellcheck="false"
                 data-testid="subscription-zone" value=${form.timeZone} onInput=${field("timeZone")} />
          <${TimeZones} />
        </div>
      </div>

      <fieldset class="choices">
        <legend>How</legend>
        ${CHANNELS.map(
          ([channel, label]) => html`
            <label key=${channel} class="choice">
              <input type="radio" name="channel" value=${channel} checked=${form.channel === channel}
                     data-testid=${`channel-${channel}`} onChange=${() => set("channel", channel)} />
              ${label}</label>`,
        )}
        <div class="field field-wide" hidden=${form.channel !== "webhook"}>
          <label for="subscription-webhook">Webhook address (https)</label>
          <input id="subscription-webhook" type="url" data-testid="subscription-webhook" value=${form.webhookUrl}
                 placeholder="https://example.org/skyport" onInput=${field("webhookUrl")} />
        </div>
      </fieldset>

      <p id="subscription-preview" class="preview" data-testid="subscription-preview" aria-live="polite"
         aria-busy=${String(preview.pending)}>
        ${absent
          ? `${absent} A preview of what these settings would have sent then shows here.`
          : preview.pending && !preview.text
            ? "Counting what these settings would have sent over the last 30 days…"
            : preview.error || preview.text}
      </p>
      <p class="error" role="alert" data-testid="subscription-form-error" hidden=${!error}>${error}</p>
      <div class="form-actions">
        <button type="submit" data-testid="save-subscription" disabled=${busy}>
          ${editing ? "Save changes" : "Subscribe"}</button>
        <a href="#/subscriptions" data-testid="cancel-subscription">Cancel</a>
      </div>
    </form>
  `;
}

/** What the subscription is about: a program (mission and ID) or one file; fixed once it exists. */
function Target({ form, editing, programs, set, field }) {
  if (editing) {
    return html`<p class="hint" data-testid="subscription-about">What a subscription is about stays as it is; to
      follow something else, add another subscription.</p>`;
  }
  return html`
    <fieldset class="choices">
      <legend>About</legend>
      <label class="choice"><input type="radio" name="target" value="program" checked=${form.target === "program"}
        data-testid="target-program" onChange=${() => set("target", "program")} /> A program</label>
      <label class="choice"><input type="radio" name="target" value="file" checked=${form.target === "file"}
        data-testid="target-file" onChange=${() => set("target", "file")} /> One file</label>
      <div class="form-row" hidden=${form.target !== "program"}>
        <div class="field">
          <label for="subscription-mission">Mission</label>
          <input id="subscription-mission" data-testid="subscription-mission" value=${form.mission}
                 list="known-missions" autocomplete="off" spellcheck="false" placeholder="KECK"
                 onInput=${field("mission")} />
          <datalist id="known-missions">
            ${[...new Set(programs.map((p) => p.mission))].map((m) => html`<option key=${m} value=${m} />`)}
          </datalist>
        </div>
        <div class="field">
          <label for="subscription-propid">Program ID</label>
          <input id="subscription-propid" data-testid="subscription-propid" value=${form.propid}
                 list="known-programs" autocomplete="off" spellcheck="false" placeholder="2026B_U042"
                 onInput=${field("propid")} />
          <datalist id="known-programs">
            ${programs.map((p) => html`<option key=${`${p.mission}/${p.propid}`} value=${p.propid} />`)}
          </datalist>
        </div>
      </div>
      <div class="field field-wide" hidden=${form.target !== "file"}>
        <label for="subscription-archive-id">Archive ID</label>
        <input id="subscription-archive-id" data-testid="subscription-archive-id" value=${form.archiveId}
               autocomplete="off" spellcheck="false" onInput=${field("archiveId")} />
      </div>
    </fieldset>
  `;
}

/** The IANA zones the browser knows, offered as the zone field's suggestions (any name may still be typed). */
function TimeZones() {
  const zones = typeof Intl.supportedValuesOf === "function" ? Intl.supportedValuesOf("timeZone") : [];
  return html`<datalist id="time-zones">${zones.map((z) => html`<option key=${z} value=${z} />`)}</datalist>`;
}
