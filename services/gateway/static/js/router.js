// A small hash router: "#/files", "#/members", …; each later page adds a route and its view module. Other
// hashes (the skip link's "#main") are in-page anchors, not routes, and leave the view as it is.

import { useEffect, useState } from "../vendor/preact-htm.js";

export const ROUTES = ["files", "members"];
const DEFAULT = ROUTES[0];

/** The route a hash names, or null when it names none. */
export function routeOf(hash) {
  const match = /^#\/([a-z-]+)$/.exec(hash);
  return match && ROUTES.includes(match[1]) ? match[1] : null;
}

export function navigate(route) {
  if (routeOf(location.hash) !== route) location.hash = `#/${route}`;
}

/** The current route, kept in step with the address bar (back and forward included). */
export function useRoute() {
  const [route, setRoute] = useState(() => routeOf(location.hash) || DEFAULT);
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
