// Tests drive the real bundled executable: build it once per run. A failed build is reported
// here and leaves no dist/ (the build empties it first), so every test that runs the
// executable fails too; tests of modules on their own still run and report.
import { execFileSync } from 'node:child_process';

export default function setup(): void {
  try {
    execFileSync(process.execPath, ['scripts/build.mjs'], { stdio: 'inherit' });
  } catch {
    process.stderr.write('\n*** corral build failed (see above): tests that run dist/corral.mjs will fail ***\n\n');
  }
}
