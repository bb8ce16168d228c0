// Programs and roles as the page names them.

export function programKey(p) {
  return `${p.mission}/${p.propid}`;
}

export function roleName(role) {
  return { pi: "PI", coi: "co-investigator", collaborator: "collaborator" }[role] || "administrator access";
}

export function roleWithArticle(role) {
  return { pi: "the PI", coi: "a co-investigator", collaborator: "a collaborator" }[role] || role;
}

/** The programs of /v1/me or of the stream, in the page's shape. */
export function normalPrograms(programs) {
  return programs.map((p) => ({ mission: p.mission, propid: p.propid, role: p.role ?? null, title: p.title ?? null }));
}

/** The roles the grant form offers, in the order it lists them. */
const GRANT_ORDER = ["collaborator", "coi", "pi"];

/**
 * What the catalog's members answer (GET /v1/programs/{mission}/{propid}/members) lets the viewer do, in the
 * page's shape. The catalog decides it by its access rule; the page only reads it, and a flag missing from the
 * answer (an older catalog) offers nothing: the catalog refuses what it does not allow anyway.
 */
export function memberRights(answer) {
  const granted = Array.isArray(answer && answer.grantable_roles) ? answer.grantable_roles : [];
  const members = Array.isArray(answer && answer.members) ? answer.members : [];
  return {
    members: members.map((m) => ({ ...m, removable: m.may_remove === true })),
    manage: Boolean(answer && answer.may_manage_members === true),
    grantableRoles: GRANT_ORDER.filter((role) => granted.includes(role)),
    releaseEarly: Boolean(answer && answer.may_release_early === true),
  };
}
