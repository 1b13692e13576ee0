// Bundle the study viewer (Cornerstone3D and its dependencies) into one script the
// gateway serves itself: no CDN, works offline. Run by the set-up (`npm run build`).
import { build } from "esbuild";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const outfile = path.resolve(here, "dist/overread-viewer.js");

await build({
  entryPoints: [path.join(here, "src/viewer.js")],
  bundle: true,
  format: "iife",
  platform: "browser",
  target: ["chrome110", "firefox110", "safari16"],
  minify: true,
  sourcemap: false,
  legalComments: "eof", // the licences travel inside the one script served
  logLevel: "warning",
  outfile,
  // Node built-ins that vtk.js's XML writer pulls in; never called in the browser.
  alias: { events: path.join(here, "shims/events.js"), url: path.join(here, "shims/url.js") },
});
console.log("viewer bundle: " + path.relative(process.cwd(), outfile));
