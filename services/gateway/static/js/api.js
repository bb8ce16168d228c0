// The gateway's HTTP API for one signed-in token: the token is only ever sent in an Authorization header.

/** A refusal: the HTTP status, the words for a person, and the machine-readable ``code`` the page decides on. */
export class ApiError extends Error {
  constructor(status, message, code = null) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function programPath(program) {
  return `/v1/programs/${encodeURIComponent(program.mission)}/${encodeURIComponent(program.propid)}`;
}

export class Api {
  constructor(token) {
    this.token = token;
  }

  async request(method, path, body) {
    const headers = { Authorization: `Bearer ${this.token}`, Accept: "application/json" };
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch {
      throw new ApiError(0, "the gateway cannot be reached; check your network connection");
    }
    let data = null;
    if (response.status !== 204) {
      try {
        data = await response.json();
      } catch {
        data = null;
      }
    }
    if (!response.ok) {
      const message =
        data && typeof data.error === "string" ? data.error : `${response.status} ${response.statusText}`;
      throw new ApiError(response.status, message, data && typeof data.code === "string" ? data.code : null);
    }
    return data;
  }

  me() {
    return this.request("GET", "/v1/me");
  }

  /** A ticket: good once, for the stream or for one file's download. */
  async ticket() {
    const body = await this.request("POST", "/v1/tickets");
    if (!body || typeof body.ticket !== "string") throw new ApiError(502, "the gateway answered without a ticket");
    return body.ticket;
  }

  /** The program's members, and what the viewer may do with them (the catalog's answer, as it is). */
  members(program) {
    return this.request("GET", `${programPath(program)}/members`);
  }

  grant(program, username, role) {
    return this.request("PUT", `${programPath(program)}/members/${encodeURIComponent(username)}`, { role });
  }

  revoke(program, username) {
    return this.request("DELETE", `${programPath(program)}/members/${encodeURIComponent(username)}`);
  }

  // The notifier's API, at the same address (the gateway forwards it; services/notifier/openapi.yaml).

  /** The signed-in person's subscriptions: {subscriptions: [...]}. */
  subscriptions() {
    return this.request("GET", "/v1/subscriptions");
  }

  /** Each mission's levels, lowest first, and its default: {missions: [{mission, levels, default_level}]}. */
  levels() {
    return this.request("GET", "/v1/subscriptions/levels");
  }

  subscribe(request) {
    return this.request("POST", "/v1/subscriptions", request);
  }

  /** What a subscription (a create's body) would have sent over the last 30 days: {days, notices, messages, …}. */
  preview(request) {
    return this.request("POST", "/v1/subscriptions/preview", request);
  }

  changeSubscription(subscriptionId, change) {
    return this.request("PATCH", `/v1/subscriptions/${encodeURIComponent(subscriptionId)}`, change);
  }

  deleteSubscription(subscriptionId) {
    return this.request("DELETE", `/v1/subscriptions/${encodeURIComponent(subscriptionId)}`);
  }

  /** In-page notices, newest first, and how many of all are unread: {notices: [...], unread}. */
  inbox({ limit = 50, before = null } = {}) {
    const params = new URLSearchParams({ limit: String(limit) });
    if (before != null) params.set("before", String(before));
    return this.request("GET", `/v1/inbox?${params}`);
  }

  /** Marks notices read: ``{ids: [...]}`` or ``{all: true}``; answers {marked, unread}. */
  markRead(which) {
    return this.request("POST", "/v1/inbox/read", which);
  }

  /** The address of a file's bytes, good once with ``ticket`` (the browser fetches it and streams it to disk). */
  static fileUrl(archiveId, version, ticket) {
    const params = new URLSearchParams({ version: String(version), ticket });
    return `/v1/files/${encodeURIComponent(archiveId)}?${params}`;
  }
}
