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

/** The PI manages a program's members, and an administrator every program's. */
export function canManage(program, me) {
  return Boolean(program && (program.role === "pi" || (me && me.is_admin)));
}
