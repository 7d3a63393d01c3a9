// Validates Istio objects (JSON, one per line on stdin) against the Istio CRD
// schemas shipped in @kubernetes-models/istio. Exits 1 on the first invalid one.
// ISTIO_MODELS is the installed package's directory.
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";

const root = process.env.ISTIO_MODELS;
if (!root) throw new Error("set ISTIO_MODELS to the @kubernetes-models/istio directory");
const groups = new Set(["networking.istio.io", "security.istio.io"]);

let checked = 0;
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const object = JSON.parse(line);
  const [group, version] = object.apiVersion.split("/");
  if (!groups.has(group)) throw new Error(`not an Istio object: ${object.apiVersion} ${object.kind}`);
  const models = await import(pathToFileURL(`${root}/${group}/${version}/index.js`).href);
  const Model = models[object.kind];
  if (!Model) throw new Error(`unknown Istio kind ${object.apiVersion} ${object.kind}`);
  try {
    new Model(object).validate();
  } catch (error) {
    console.error(`${object.kind}/${object.metadata?.name}: ${error.message}`);
    process.exit(1);
  }
  checked += 1;
}
console.log(`istio schemas: ${checked} objects valid`);
