// Build the package: dist/index.js (one ES module bundled by esbuild, no
// dependencies, for Node.js >= 20 and browsers) and dist/*.d.ts (tsc).
//
//   node scripts/build.mjs            build dist/
//   node scripts/build.mjs --gateway  and copy the bundle to the gateway's
//                                     static/pushmesh.js (served at /pushmesh.js)
//
// The gateway's copy is committed: cargo builds the gateway without npm.
// The SDK tests fail when it differs from a fresh build.
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { copyFileSync, readFileSync, rmSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const pkg = JSON.parse(readFileSync(path.join(here, "package.json"), "utf8"));
export const GATEWAY_COPY = path.resolve(here, "../../services/ws-gateway/static/pushmesh.js");

rmSync(path.join(here, "dist"), { recursive: true, force: true });
execFileSync(process.execPath, [path.join(here, "node_modules/typescript/bin/tsc"), "-p", here], { stdio: "inherit" });
await build({
  entryPoints: [path.join(here, "src/index.ts")],
  outfile: path.join(here, "dist/index.js"),
  bundle: true,
  format: "esm",
  platform: "neutral",
  target: "es2022",
  charset: "utf8",
  legalComments: "none",
  banner: {
    js: `// ${pkg.name} ${pkg.version} (${pkg.license}): built from clients/js/src by scripts/build.mjs; do not edit.`,
  },
  logLevel: "warning",
});
if (process.argv.includes("--gateway")) {
  copyFileSync(path.join(here, "dist/index.js"), GATEWAY_COPY);
  console.log(`copied dist/index.js to ${path.relative(process.cwd(), GATEWAY_COPY)}`);
}
