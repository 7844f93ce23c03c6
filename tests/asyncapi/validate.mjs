// Validate an AsyncAPI document with the official parser (@asyncapi/parser, installed by
// `make npm-tools` into .npm-tools). Usage: node validate.mjs FILE. Prints the diagnostics as
// JSON; exits 1 when any is an error.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import path from "node:path";

const require = createRequire(path.resolve(process.env.NPM_TOOLS ?? ".npm-tools", "package.json"));
const { Parser } = require("@asyncapi/parser");

const text = readFileSync(process.argv[2], "utf8");
const parser = new Parser();
const { document, diagnostics } = await parser.parse(text);
const out = diagnostics.map((d) => ({
  severity: ["error", "warning", "info", "hint"][d.severity] ?? String(d.severity),
  code: d.code, message: d.message, path: d.path.join("."),
}));
console.log(JSON.stringify({ parsed: document !== undefined, diagnostics: out }, null, 2));
process.exit(document === undefined || out.some((d) => d.severity === "error") ? 1 : 0);
