// Prints one JSON object, test id -> "required" | "optimal" | "check", for the
// http-cache-tests suite unpacked at argv[2] (the tests its CLI runs; tests for
// browsers only are left out, as they do not apply to a proxy).
import { pathToFileURL } from 'node:url'
import path from 'node:path'

const dir = process.argv[2]
const load = async (file) => (await import(pathToFileURL(path.join(dir, file)).href)).default
const suites = [...(await load('tests/index.mjs')), await load('tests/surrogate-control.mjs')]
const kinds = {}
for (const suite of suites) {
  for (const test of suite.tests) {
    if (!test.browser_only) kinds[test.id] = test.kind || 'required'
  }
}
console.log(JSON.stringify(kinds))
