// Tests drive the real bundled executable: build it once per run. The build swaps a new dist/
// in only when it succeeds; if it fails, dist/ is removed so no test runs an older build, and
// every test that runs the executable fails with the build error above it.
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';

export default function setup(): void {
  try {
    execFileSync(process.execPath, ['scripts/build.mjs'], { stdio: 'inherit' });
  } catch {
    rmSync('dist', { recursive: true, force: true });
    process.stderr.write('\n*** corral build failed (see above): dist/ removed; tests that run dist/corral.mjs will fail ***\n\n');
  }
}
