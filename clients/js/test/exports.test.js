// The type declarations (pigeonpush.d.ts) name every export of the module,
// and nothing that is not exported: they cannot drift apart silently.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import * as pigeonpush from "../pigeonpush.js";

const declarations = readFileSync(new URL("../pigeonpush.d.ts", import.meta.url), "utf-8");
const DECLARED = /^export (?:const|function|class) (\w+)/gm;

test("pigeonpush.d.ts declares exactly the module's exports", () => {
  const declared = new Set([...declarations.matchAll(DECLARED)].map((m) => m[1]));
  assert.deepEqual([...declared].sort(), Object.keys(pigeonpush).sort());
});

test("package.json points at the module and its declarations", () => {
  const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf-8"));
  assert.equal(pkg.type, "module");
  assert.deepEqual(pkg.exports["."], { types: "./pigeonpush.d.ts", default: "./pigeonpush.js" });
  assert.deepEqual(Object.keys(pkg.dependencies ?? {}), []);
});
