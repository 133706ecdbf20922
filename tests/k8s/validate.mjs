// Validate Kubernetes manifests offline: every document of every YAML file
// given on the command line is checked against the Kubernetes OpenAPI schema
// of its apiVersion/kind (the validators bundled in the kubernetes-models
// package: types, formats, required fields, enums), and strictly: a field the
// schema does not know (a typo such as "readinessProbes") is an error too,
// as `kubectl apply --validate=strict` would report it.
//
// Strictness: the bundled validators read exactly the properties their
// schema declares, so each object is wrapped in a Proxy that records which
// keys were read; a key never read is unknown. An object whose keys the
// validator enumerated (a map, such as labels) is taken as fully known.
//
// Usage: node validate.mjs FILE.yaml...   Exit 0 if all valid, 1 otherwise.
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseAllDocuments } from "yaml";

// The package does not export its schema validators (_schemas/), so they are
// imported by path, from the node_modules next to this script.
const SCHEMA_DIR = join(dirname(fileURLToPath(import.meta.url)), "node_modules",
  "kubernetes-models", "_schemas");
async function loadValidator(name) {
  for (const ext of [".mjs", ".js"]) {
    const f = join(SCHEMA_DIR, name + ext);
    if (existsSync(f)) return (await import(pathToFileURL(f))).validate;
  }
  throw new Error(`no ${name} in ${SCHEMA_DIR}: run npm ci`);
}

// Kinds we ship (Kustomization is kustomize's, not an API object: checked by
// hand below).
const SCHEMAS = {
  "v1/ConfigMap": "IoK8sApiCoreV1ConfigMap",
  "v1/Service": "IoK8sApiCoreV1Service",
  "apps/v1/Deployment": "IoK8sApiAppsV1Deployment",
  "policy/v1/PodDisruptionBudget": "IoK8sApiPolicyV1PodDisruptionBudget",
};
const KUSTOMIZATION_KEYS = new Set(["apiVersion", "kind", "resources", "namespace",
  "commonLabels", "labels", "images", "configMapGenerator", "patches"]);

function track(value, path, seen) {
  if (value === null || typeof value !== "object") return value;
  const read = new Set();
  const entry = { value, path, read, enumerated: false };
  seen.push(entry);
  const cache = new Map();
  return new Proxy(value, {
    get(target, key, receiver) {
      if (typeof key === "string") read.add(key);
      const v = Reflect.get(target, key, receiver);
      if (typeof key !== "string" || v === null || typeof v !== "object") return v;
      if (!cache.has(key)) cache.set(key, track(v, `${path}/${key}`, seen));
      return cache.get(key);
    },
    ownKeys(target) {
      entry.enumerated = true;
      return Reflect.ownKeys(target);
    },
  });
}

function unknownFields(seen) {
  const out = new Set();
  for (const { value, path, read, enumerated } of seen) {
    if (Array.isArray(value) || enumerated) continue;
    for (const k of Object.keys(value)) if (!read.has(k)) out.add(`${path}/${k}`);
  }
  return [...out];
}

async function validateDoc(doc, where) {
  const errors = [];
  if (!doc || typeof doc !== "object") return [`${where}: not a mapping`];
  const id = `${doc.apiVersion}/${doc.kind}`;
  if (doc.kind === "Kustomization") {
    for (const k of Object.keys(doc))
      if (!KUSTOMIZATION_KEYS.has(k)) errors.push(`${where}: Kustomization: unknown field ${k}`);
    for (const r of doc.resources || [])
      if (typeof r !== "string") errors.push(`${where}: Kustomization: bad resource ${r}`);
    return errors;
  }
  if (!SCHEMAS[id]) return [`${where}: no schema for ${id} (add it to SCHEMAS)`];
  // The compiled JSON-schema validator (ajv) of the kind: validate(data) -> bool,
  // details in validate.errors.
  const validate = await loadValidator(SCHEMAS[id]);
  const seen = [];
  const name = doc.metadata?.name;
  if (!validate(track(structuredClone(doc), "", seen)))
    for (const e of validate.errors)
      errors.push(`${where}: ${id} ${name}: ${e.instancePath || "/"}: ${e.keyword} ` +
        JSON.stringify(e.params));
  // apiVersion and kind select the schema; the schemas do not read them.
  for (const f of unknownFields(seen).filter((f) => f !== "/apiVersion" && f !== "/kind"))
    errors.push(`${where}: ${id} ${name}: unknown field ${f}`);
  return errors;
}

let failed = 0, checked = 0;
for (const file of process.argv.slice(2)) {
  const docs = parseAllDocuments(readFileSync(file, "utf8"));
  for (const [i, d] of docs.entries()) {
    if (d.errors.length) {
      console.log(`${file}: YAML: ${d.errors.map((e) => e.message).join("; ")}`);
      failed++;
      continue;
    }
    const errs = await validateDoc(d.toJS(), `${file}#${i}`);
    checked++;
    for (const e of errs) console.log(e);
    if (errs.length) failed++;
  }
}
console.log(`${checked} documents checked, ${failed} invalid`);
process.exit(failed || !checked ? 1 : 0);
