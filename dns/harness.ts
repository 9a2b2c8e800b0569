// Moved to test/support/dns.ts. Kept only because test/bench/dns.ts still imports it from here
// (the bench is outside the test-support move); delete once that import names test/support/dns.js.
export { dig, startUnbound } from '../test/support/dns.js';
