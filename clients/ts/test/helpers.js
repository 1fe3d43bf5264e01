// Shared by the TypeScript tests: start a Python helper from sdk/ (it prints one JSON line and serves until its
// stdin closes) and compare results the way sdk/scenarios.json says.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

export const SDK_DIR = fileURLToPath(new URL("../../../sdk/", import.meta.url));
export const IN_REPO = existsSync(SDK_DIR + "scenarios.json");

export async function startHelper(script) {
  const child = spawn(process.env.PYTHON || "python3", [SDK_DIR + script], { stdio: ["pipe", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const first = await lines.next();
  if (first.done) throw new Error(`${script} printed nothing`);
  return {
    info: JSON.parse(first.value),
    async send(command) {
      child.stdin.write(command + "\n");
      const line = await lines.next();
      if (line.done) throw new Error(`${script} did not answer ${command}`);
      return line.value;
    },
    async stop() {
      child.stdin.end();
      if (child.exitCode === null) await new Promise((resolve) => child.once("exit", resolve));
    },
  };
}

/** Expected is a subset of actual; an expected null means absent or null; `reason` is a substring. */
export function subset(expected, actual, where = "$") {
  if (expected !== null && typeof expected === "object" && !Array.isArray(expected)) {
    assert.ok(actual !== null && typeof actual === "object" && !Array.isArray(actual), `${where}: expected an object, got ${JSON.stringify(actual)}`);
    for (const [key, want] of Object.entries(expected)) {
      const got = actual[key];
      if (key === "reason") assert.ok(typeof got === "string" && got.includes(want), `${where}.reason: ${want} not in ${got}`);
      else if (want === null) assert.ok(got === null || got === undefined, `${where}.${key}: expected absent or null, got ${JSON.stringify(got)}`);
      else {
        assert.ok(key in actual, `${where}.${key}: missing in ${JSON.stringify(actual)}`);
        subset(want, got, `${where}.${key}`);
      }
    }
  } else if (Array.isArray(expected)) {
    assert.ok(Array.isArray(actual) && actual.length === expected.length, `${where}: ${JSON.stringify(expected)} != ${JSON.stringify(actual)}`);
    expected.forEach((want, i) => subset(want, actual[i], `${where}[${i}]`));
  } else {
    assert.deepEqual(actual, expected, where);
  }
}
