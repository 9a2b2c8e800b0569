// Bundles the `corral` executable into dist/ (one ESM entry plus lazily loaded chunks, so a
// client command does not load the daemons' dependencies), and copies the .proto beside it.
// Builds into a fresh directory and swaps it in, so processes running from dist/ (tests in
// parallel, a running daemon) never see it half-written or empty.
import { build } from 'esbuild';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';

const { version } = JSON.parse(readFileSync('package.json', 'utf8'));

// The web console's page (agent/console/page/) travels inside the bundle: no files to install beside it.
const consolePage = Object.fromEntries(readdirSync('agent/console/page').map((f) => [f, readFileSync(`agent/console/page/${f}`, 'utf8')]));

const out = `dist.new-${process.pid}`;
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
await build({
  entryPoints: { corral: 'cli/main.ts' },
  outdir: out,
  outExtension: { '.js': '.mjs' },
  chunkNames: 'chunks/[name]-[hash]',
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  sourcemap: 'linked',
  // Native addons and optional native speed-ups stay outside the bundle.
  external: ['netlink', 'koffi', 'etcd3', 'cpu-features', 'ssh2'],
  banner: {
    js: "#!/usr/bin/env node\nimport { createRequire as __corralRequire } from 'node:module'; const require = __corralRequire(import.meta.url);",
  },
  define: { __CORRAL_VERSION__: JSON.stringify(version), __CORRAL_CONSOLE_PAGE__: JSON.stringify(consolePage) },
  logLevel: 'warning',
});
// The CNI plugin: one self-contained file (no chunks, no dependencies), exec'd per container.
// A plain script (no import/export; built-ins via process.getBuiltinModule): installed without
// an extension, Node runs it without the ESM loader.
await build({
  entryPoints: { 'corral-cni': 'cni-plugin/main.ts' },
  outdir: out,
  outExtension: { '.js': '.mjs' },
  bundle: true,
  format: 'iife',
  platform: 'node',
  target: 'node20',
  minify: true,
  banner: { js: '#!/usr/bin/env node' },
  logLevel: 'warning',
});
chmodSync(`${out}/corral-cni.mjs`, 0o755);
copyFileSync('api/corral.proto', `${out}/corral.proto`);
chmodSync(`${out}/corral.mjs`, 0o755);
const old = `dist.old-${process.pid}`;
if (existsSync('dist')) renameSync('dist', old);
renameSync(out, 'dist');
rmSync(old, { recursive: true, force: true });
