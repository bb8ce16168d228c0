// A small hash router: "#/files", "#/members", "#/subscriptions/12", …; each page is a route and its view
// module. A route may name one thing below it (a subscription's id, or "new" with the form's first values in a
// query: "#/subscriptions/new?mission=KECK&propid=2026B_U042"), so that an email's link opens that thing. Other
// hashes (the skip link's "#main") are in-page anchors, not routes, and leave the view as it is.

import { useEffect, useState } from "../vendor/preact-htm.js";

export const ROUTES = ["files", "members", "subscriptions", "inbox"];
const DEFAULT = ROUTES[0];

/** The route a hash names ({name, id, params}: id "" when it names nothing below the route), or null. */
export function routeOf(hash) {
  const match = /^#\/([a-z-]+)(?:\/([A-Za-z0-9_-]{1,64}))?(?:\?(.*))?$/.exec(hash);
  if (!match || !ROUTES.includes(match[1])) return null;
  const params = Object.fromEntries(new URLSearchParams(match[3] || ""));
  return { name: match[1], id: match[2] || "", params };
}

/** The hash of a route: ``hashOf("subscriptions", "new", {mission: "KECK"})`` is "#/subscriptions/new?mission=KECK". */
export function hashOf(name, id = "", params = {}) {
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v != null && v !== "")).toString();
  return `#/${name}${id ? `/${encodeURIComponent(id)}` : ""}${query ? `?${query}` : ""}`;
}

export function navigate(name, id = "", params = {}) {
  const hash = hashOf(name, id, params);
  if (location.hash !== hash) location.hash = hash;
}

/** The current route, kept in step with the address bar (back and forward included). */
export function useRoute() {
  const [route, setRoute] = useState(() => routeOf(location.hash) || routeOf(`#/${DEFAULT}`));
  useEffect(() => {
    const follow = () => {
      const next = routeOf(location.hash);
      if (next) setRoute(next);
    };
    window.addEventListener("hashchange", follow);
    return () => window.removeEventListener("hashchange", follow);
  }, []);
  return route;
}
