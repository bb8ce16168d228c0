// The page runs with no build step: every module it loads is a file under static/, imported by relative path.

import assert from "node:assert/strict";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const STATIC = resolve(dirname(fileURLToPath(import.meta.url)), "../../../../services/gateway/static");
const IMPORT = /^\s*import\s[^"']*["']([^"']+)["'];?$/gm;

function modules(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return modules(path);
    return entry.name.endsWith(".js") ? [path] : [];
  });
}

test("every import of the page's modules is a relative path to a file that exists", () => {
  const found = modules(join(STATIC, "js"));
  assert.ok(found.length >= 10, `only ${found.length} modules under js/`);
  for (const module of found) {
    for (const [, specifier] of readFileSync(module, "utf8").matchAll(IMPORT)) {
      const where = relative(STATIC, module);
      assert.match(specifier, /^\.\.?\//, `${where} imports ${specifier}: a bare name needs a build step`);
      assert.ok(existsSync(resolve(dirname(module), specifier)), `${where} imports ${specifier}, which is missing`);
    }
  }
});

test("the page loads its entry module, and the vendored library comes with its licences", () => {
  const page = readFileSync(join(STATIC, "index.html"), "utf8");
  const [, entry] = page.match(/<script type="module" src="\/static\/([^"]+)"><\/script>/) || [];
  assert.ok(entry && existsSync(join(STATIC, entry)), `index.html loads ${entry}`);
  for (const name of ["preact-htm.js", "LICENSE.htm", "LICENSE.preact", "README.md"]) {
    assert.ok(existsSync(join(STATIC, "vendor", name)), `vendor/${name} is missing`);
  }
});
