// Heimdall's own parser on HDF files: for each file named on the command line, convert it
// with inspecjs (the library Heimdall loads files with), contextualize it, and print one
// JSON line: the file, the converted type, control counts by status as Heimdall counts them
// (each control that no other control extends, once per id, by its root's hdf.status) and
// what the file carries in platform.target_id and passthrough.
// Run with NODE_PATH pointing at the node_modules that holds inspecjs.
"use strict";
const fs = require("fs");
const inspecjs = require("inspecjs");

const STATUS = {
  Passed: "passed",
  Failed: "failed",
  "Not Reviewed": "skipped",
  "Not Applicable": "no_impact",
  "Profile Error": "error",
};

for (const file of process.argv.slice(2)) {
  const text = fs.readFileSync(file, "utf8");
  const converted = inspecjs.convertFile(text, true);
  const exec = converted["1_0_ExecJson"];
  if (!exec) {
    console.log(JSON.stringify({ file, error: "not converted", errors: converted.errors }));
    continue;
  }
  const ev = inspecjs.contextualizeEvaluation(exec);
  const counts = { passed: 0, failed: 0, skipped: 0, no_impact: 0, error: 0 };
  const seen = new Set();
  for (const profile of ev.contains) {
    for (const control of profile.contains) {
      if (control.extendedBy.length > 0 || seen.has(control.data.id)) continue;
      seen.add(control.data.id);
      counts[STATUS[control.root.hdf.status]] += 1;
    }
  }
  const data = JSON.parse(text);
  console.log(
    JSON.stringify({
      file,
      counts,
      target_id: (exec.platform || {}).target_id,
      passthrough: data.passthrough,
    })
  );
}
