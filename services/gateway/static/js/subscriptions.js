// Subscriptions as the page shows and edits them: the form's values, the notifier's request bodies made from
// them, and a subscription or a preview in words. Pure (no DOM, no network), so `node --test` checks it.

export const TRIGGERS = [
  ["new", "New data"],
  ["first", "First data of the program"],
  ["repro", "Reprocessed"],
  ["public", "Made public"],
];

export const FREQUENCIES = [
  ["fast", "As it happens"],
  ["hourly", "Hourly"],
  ["daily", "Daily"],
  ["weekly", "Weekly"],
  ["monthly", "Monthly"],
];

export const CHANNELS = [
  ["email", "Email"],
  ["page", "On this page (inbox)"],
  ["webhook", "Webhook"],
];

/** Frequencies whose notices wait for a time of day (fast and hourly ones do not). */
export const TIMED = new Set(["daily", "weekly", "monthly"]);

/** The browser's own time zone, the form's default ("UTC" where the browser says none). */
export function browserTimeZone() {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  } catch {
    return "UTC";
  }
}

/** A new subscription's form; ``prefill``: {mission, propid} or {archive_id} (a "Notify me" link's query). */
export function newForm(prefill = {}, timeZone = "UTC") {
  return {
    target: prefill.archive_id ? "file" : "program",
    mission: (prefill.mission || "").toUpperCase(),
    propid: prefill.propid || "",
    obset: null,
    archiveId: prefill.archive_id || "",
    triggers: Object.fromEntries(TRIGGERS.map(([t]) => [t, true])),
    minLevel: "",
    orAbove: true,
    frequency: "daily",
    timeOfDay: "08:00",
    timeZone,
    channel: "email",
    webhookUrl: "",
  };
}

/** The form of a subscription as kept (GET /v1/subscriptions), to edit it. */
export function formOf(s) {
  return {
    target: s.archive_id ? "file" : "program",
    mission: s.mission || "",
    propid: s.propid || "",
    obset: s.obset || null,
    archiveId: s.archive_id || "",
    triggers: Object.fromEntries(TRIGGERS.map(([t]) => [t, (s.triggers || []).includes(t)])),
    minLevel: s.min_level || "",
    orAbove: s.or_above !== false,
    frequency: s.frequency,
    timeOfDay: s.time_of_day,
    timeZone: s.time_zone,
    channel: s.channel,
    webhookUrl: s.webhook_url || "",
  };
}

/** What is missing before the notifier can be asked anything (a sentence), or "" when nothing is. */
export function missing(form) {
  if (form.target === "file" && !form.archiveId.trim()) return "Enter the archive ID of the file.";
  if (form.target === "program" && !(form.mission.trim() && form.propid.trim())) {
    return "Enter the mission and the program ID.";
  }
  if (!TRIGGERS.some(([t]) => form.triggers[t])) return "Choose at least one kind of change to hear about.";
  if (form.channel === "webhook" && !form.webhookUrl.trim()) return "Enter the address the webhook is sent to.";
  return "";
}

/** The settings a subscription has whatever it is about: PATCH /v1/subscriptions/{id}'s body. */
export function changeOf(form) {
  return {
    triggers: TRIGGERS.map(([t]) => t).filter((t) => form.triggers[t]),
    min_level: form.minLevel.trim() || null,
    or_above: form.orAbove,
    frequency: form.frequency,
    time_of_day: form.timeOfDay,
    time_zone: form.timeZone.trim(),
    channel: form.channel,
    webhook_url: form.channel === "webhook" ? form.webhookUrl.trim() : null,
  };
}

/** POST /v1/subscriptions's (and the preview's) body: what the subscription is about, and its settings. */
export function requestOf(form) {
  const about =
    form.target === "file"
      ? { archive_id: form.archiveId.trim() }
      : { mission: form.mission.trim().toUpperCase(), propid: form.propid.trim(), obset: form.obset };
  const body = { ...about, ...changeOf(form) };
  // min_level is in a mission's level order: a file alone names no mission, so it has none.
  if (form.target === "file") delete body.min_level;
  return body;
}

/** The notifier's level orders (GET /v1/subscriptions/levels) by mission: {KECK: {levels, defaultLevel}}. */
export function levelOrders(answer) {
  const missions = Array.isArray(answer && answer.missions) ? answer.missions : [];
  return Object.fromEntries(
    missions.map((m) => [String(m.mission).toUpperCase(), { levels: m.levels || [], defaultLevel: m.default_level ?? null }]),
  );
}

/** What an empty level means for a mission's subscription, in words. */
export function defaultLevelText(order) {
  return order && order.defaultLevel ? `The mission's default: ${order.defaultLevel} or above` : "Every level";
}

function plural(n, one, many) {
  return `${n.toLocaleString("en")} ${n === 1 ? one : many}`;
}

const MESSAGE_WORDS = {
  email: ["email", "emails"],
  page: ["in-page notice", "in-page notices"],
  webhook: ["webhook call", "webhook calls"],
};

/** A preview's answer in a sentence: "Over the last 30 days these settings would have sent 2 emails about 5 events." */
export function previewText(preview, channel) {
  const [one, many] = MESSAGE_WORDS[channel] || MESSAGE_WORDS.email;
  const days = plural(preview.days, "day", "days");
  const events = (n) => plural(n, "event", "events");
  if (!preview.notices) {
    const seen = preview.events ? ` (${events(preview.events)}, none of these kinds or levels)` : "";
    return `Over the last ${days} these settings would have sent nothing${seen}.`;
  }
  if (!preview.messages) {
    // Found, but held for a digest whose time has not come yet.
    return `Over the last ${days} these settings would have sent no ${one} yet: ${events(preview.notices)} ${
      preview.notices === 1 ? "waits" : "wait"
    } for the next digest.`;
  }
  return `Over the last ${days} these settings would have sent ${plural(preview.messages, one, many)} about ${events(
    preview.notices,
  )}.`;
}

/** What a subscription is about: "KECK/2026B_U042", "KECK/2026B_U042 obset 002", "file KOA.HI.1". */
export function what(s) {
  if (s.archive_id) return `file ${s.archive_id}`;
  const program = `${s.mission}/${s.propid}`;
  return s.obset ? `${program} obset ${s.obset}` : program;
}

/** A kept subscription's settings in words, one string per column of the list. */
export function describe(s) {
  const names = Object.fromEntries(TRIGGERS);
  const at = TIMED.has(s.frequency) ? ` at ${s.time_of_day} (${s.time_zone})` : "";
  const frequency = { fast: "As it happens", hourly: "Hourly" }[s.frequency] || `${capital(s.frequency)}${at}`;
  const channel =
    { email: `Email to ${s.email}`, page: "On this page", webhook: `Webhook to ${s.webhook_url}` }[s.channel] ||
    s.channel;
  return {
    what: what(s),
    triggers: (s.triggers || []).map((t) => names[t] || t).join(", "),
    level: s.min_level ? `${s.min_level}${s.or_above === false ? " only" : " or above"}` : "Every level",
    frequency,
    channel,
    stopped: s.stopped_at ? `Stopped: ${s.stopped_reason || "the channel refused"}` : "",
  };
}

function capital(word) {
  return word ? word[0].toUpperCase() + word.slice(1) : "";
}
