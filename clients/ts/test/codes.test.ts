// The code tables of clients/ts/src/codes.ts against docs/PROTOCOL.md sections 9 and 10.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { ErrorCode, GoodbyeCode, errorName } from "../src/codes.js";

const doc = readFileSync(new URL("../../../../docs/PROTOCOL.md", import.meta.url), "utf8");

function table(from: string, to: string): Record<string, number> {
  const section = doc.slice(doc.indexOf(from), doc.indexOf(to));
  const rows: Record<string, number> = {};
  for (const m of section.matchAll(/^\| (\d+) \| `([A-Z_]+)` \|/gm)) rows[m[2]!] = Number(m[1]);
  return rows;
}

test("every error code of section 9, and no other", () => {
  const rows = table("## 9. Error codes", "## 10. Goodbye codes");
  assert.ok(Object.keys(rows).length > 40);
  assert.deepEqual({ ...ErrorCode }, rows);
});

test("every goodbye code of section 10, and no other", () => {
  const rows = table("## 10. Goodbye codes", "## 11. Limits");
  assert.deepEqual({ ...GoodbyeCode }, rows);
});

test("an unknown code is named by its hundred", () => {
  assert.equal(errorName(ErrorCode.RATE_LIMITED), "RATE_LIMITED");
  assert.equal(errorName(599), "limits error 599");
});
