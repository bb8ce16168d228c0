// What the page lets a viewer do with a program's members comes from the catalog's answer, never from a role
// the page weighs itself (services/gateway/static/js/programs.js and the modules that use it), run by `node --test`.

import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { memberRights } from "../../../../services/gateway/static/js/programs.js";

const JS = resolve(dirname(fileURLToPath(import.meta.url)), "../../../../services/gateway/static/js");
const member = (username, role, may_remove) => ({ username, role, granted_by: null, granted_at: "2026-03-15",
  may_remove });

test("a viewer who may manage is offered the roles and removals the catalog grants them, nothing more", () => {
  // What the catalog answers a PI: every role but the PI's, every member but the PI.
  const rights = memberRights({
    members: [member("alice", "pi", false), member("bob", "collaborator", true)],
    may_manage_members: true,
    grantable_roles: ["coi", "collaborator"],
    may_release_early: true,
  });
  assert.equal(rights.manage, true);
  assert.deepEqual(rights.grantableRoles, ["collaborator", "coi"]); // the form's order, the catalog's set
  assert.deepEqual(
    rights.members.map((m) => [m.username, m.removable]),
    [["alice", false], ["bob", true]],
  );
  assert.equal(rights.releaseEarly, true);
});

test("the catalog's word is followed even where a role would suggest otherwise", () => {
  // A PI the catalog allows nothing (a rule the page does not know), and a collaborator it allows everything:
  // the page follows the flags, not the roles.
  const pi = memberRights({
    members: [member("alice", "pi", false), member("bob", "collaborator", false)],
    may_manage_members: false,
    grantable_roles: [],
    may_release_early: false,
  });
  assert.equal(pi.manage, false);
  assert.deepEqual(pi.grantableRoles, []);
  assert.ok(pi.members.every((m) => !m.removable));
  const collaborator = memberRights({
    members: [member("alice", "pi", true)],
    may_manage_members: true,
    grantable_roles: ["pi", "coi", "collaborator"],
    may_release_early: true,
  });
  assert.deepEqual(collaborator.grantableRoles, ["collaborator", "coi", "pi"]);
  assert.equal(collaborator.members[0].removable, true);
});

test("an answer without the flags (or no answer) offers nothing", () => {
  for (const answer of [null, undefined, {}, { members: [{ username: "bob", role: "collaborator" }] }]) {
    const rights = memberRights(answer);
    assert.equal(rights.manage, false);
    assert.deepEqual(rights.grantableRoles, []);
    assert.equal(rights.releaseEarly, false);
    assert.ok(rights.members.every((m) => m.removable === false));
  }
  // Only a true boolean opens a door: a string or a number from a confused server does not.
  const odd = memberRights({ members: [member("bob", "coi", "yes")], may_manage_members: 1, grantable_roles: "pi" });
  assert.equal(odd.manage, false);
  assert.deepEqual(odd.grantableRoles, []);
  assert.equal(odd.members[0].removable, false);
});

function modules(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return modules(path);
    return entry.name.endsWith(".js") ? [path] : [];
  });
}

// A role compared with a role's name, or the administrator flag read: the page deciding who may do what.
const ROLE_NAME = String.raw`["'](?:pi|coi|collaborator)["']`;
const DECIDING = new RegExp(
  String.raw`\brole\s*[!=]==?\s*${ROLE_NAME}|${ROLE_NAME}\s*[!=]==?\s*[\w.]*role\b|\bis_admin\b`,
);
// The profile words the administrator's view ("you see every program"), a label that opens no door.
const LABELS_ONLY = new Set(["views/profile.js"]);

test("no module of the page weighs a role or the administrator flag to decide what to offer", () => {
  const found = modules(JS);
  assert.ok(found.length >= 10, `only ${found.length} modules under js/`);
  const deciding = [];
  for (const path of found) {
    const name = relative(JS, path);
    if (LABELS_ONLY.has(name)) continue;
    readFileSync(path, "utf8")
      .split("\n")
      .forEach((line, i) => {
        if (DECIDING.test(line)) deciding.push(`${name}:${i + 1}: ${line.trim()}`);
      });
  }
  assert.deepEqual(deciding, []);
  // The check finds what it looks for.
  for (const sample of ['program.role === "pi"', 'm.role !== "pi"', '"pi" === member.role', "me && me.is_admin"]) {
    assert.match(sample, DECIDING, sample);
  }
});
