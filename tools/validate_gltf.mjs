#!/usr/bin/env node
// Validate glTF/GLB files with the Khronos glTF validator (npm package `gltf-validator`).
// Usage: node tools/validate_gltf.mjs FILE.glb [...]
// Finds the package through normal resolution or GLTF_VALIDATOR_DIR (default: <repo>/.cache/node).
// Prints the validator's report for each file as one JSON line on stdout (counts in report.issues.numErrors,
// numWarnings, numInfos, numHints; details in report.issues.messages) and a one-line summary on stderr.
// Exit status: 0 when no file has errors, 1 otherwise, 2 for usage or loading problems.
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const nodeDir = process.env.GLTF_VALIDATOR_DIR || path.join(here, "..", ".cache", "node");

function loadValidator() {
  const require = createRequire(path.join(nodeDir, "package.json"));
  for (const name of ["gltf-validator", path.join(nodeDir, "node_modules", "gltf-validator")]) {
    try {
      return require(name);
    } catch (e) {
      /* try the next location */
    }
  }
  return null;
}

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node tools/validate_gltf.mjs FILE.glb [...]");
  process.exit(2);
}
const validator = loadValidator();
if (!validator) {
  console.error(`gltf-validator not found (npm install --prefix ${nodeDir} gltf-validator)`);
  process.exit(2);
}
let failed = false;
for (const file of files) {
  const bytes = new Uint8Array(await readFile(file));
  const report = await validator.validateBytes(bytes, {
    uri: path.basename(file),
    maxIssues: 100,
    externalResourceFunction: async (uri) =>
      new Uint8Array(await readFile(path.resolve(path.dirname(file), decodeURIComponent(uri)))),
  });
  const i = report.issues;
  failed ||= i.numErrors > 0;
  console.log(JSON.stringify(report));
  console.error(`${file}: ${i.numErrors} errors, ${i.numWarnings} warnings, ${i.numInfos} infos, ${i.numHints} hints`);
}
process.exit(failed ? 1 : 0);
