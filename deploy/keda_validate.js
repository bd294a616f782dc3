// Validates KEDA objects (JSON array on stdin) with @kubernetes-models/keda; prints one line
// per object and exits 1 if any is invalid. The package is ESM-only, and ESM ignores
// NODE_PATH, so its node_modules folder comes as the first argument.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.argv[2];
if (!modules) {
  console.error("usage: node keda_validate.js <node_modules dir> < objects.json");
  process.exit(2);
}
const objects = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const obj of objects) {
  const [group, version] = obj.apiVersion.split("/");
  const where = `${obj.kind}/${obj.metadata?.name}`;
  const file = join(modules, "@kubernetes-models/keda", group, version, `${obj.kind}.js`);
  let model;
  try {
    model = (await import(pathToFileURL(file).href))[obj.kind];
  } catch (err) {
    console.log(`${where}: no KEDA model for ${obj.apiVersion} ${obj.kind}`);
    failed++;
    continue;
  }
  try {
    new model(obj).validate();
    console.log(`${where}: valid`);
  } catch (err) {
    console.log(`${where}: ${err.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
