import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['**/*.test.ts'],
    globalSetup: ['test/support/global-setup.ts'],
    exclude: ['node_modules/**', 'dist/**'],
    testTimeout: 60_000,
    hookTimeout: 180_000,
    // Tests start real daemons, dockerd and namespaces: run files one at a time on 2 cores.
    fileParallelism: false,
    pool: 'forks',
  },
});
