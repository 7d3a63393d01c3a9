// Validates custom resources (JSON, one per line on stdin) against the CRD
// schemas shipped in @kubernetes-models packages: Istio's
// (@kubernetes-models/istio) and the Prometheus Operator's
// (@kubernetes-models/prometheus-operator). Exits 1 on the first invalid one.
// MODELS is a JSON object from API group to the installed package's directory.
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";

const models = JSON.parse(process.env.MODELS ?? "{}");
if (!Object.keys(models).length) throw new Error("set MODELS to {\"group\": \"package directory\", …}");

const checked = {};
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const object = JSON.parse(line);
  const [group, version] = object.apiVersion.split("/");
  const root = models[group];
  if (!root) throw new Error(`no schemas for ${object.apiVersion} ${object.kind}`);
  const types = await import(pathToFileURL(`${root}/${group}/${version}/index.js`).href);
  const Model = types[object.kind];
  if (!Model) throw new Error(`unknown kind ${object.apiVersion} ${object.kind}`);
  try {
    new Model(object).validate();
  } catch (error) {
    console.error(`${object.kind}/${object.metadata?.name}: ${error.message}`);
    process.exit(1);
  }
  checked[group] = (checked[group] ?? 0) + 1;
}
console.log(`CRD schemas: ${JSON.stringify(checked)} objects valid`);
