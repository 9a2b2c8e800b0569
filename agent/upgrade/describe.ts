// One line for people saying where an upgrade is: progress events, `corral status`, `corral services`.
import type { Upgrade } from '../../api/types.js';

/** One line for people: where an upgrade is. */
export function describe(u: Upgrade): string {
  const head = `${u.fromColor} -> ${u.toColor} (${u.image})`;
  switch (u.phase) {
    case 'checking': return `${head}: checking the image on ${u.hosts.join(', ')}`;
    case 'cloning': return `${head}: cloning ${u.fromColor}'s containers and waiting for the clones to be healthy`;
    case 'stepping': {
      const pct = u.steps[u.step] ?? 0;
      const left = Math.max(0, u.stepStartedMs + u.stepMs * (u.steps.length - u.step) - Date.now());
      return `${head}: step ${u.step + 1}/${u.steps.length}, ${u.toColor} ${pct}% ${u.fromColor} ${100 - pct}%, about ${Math.ceil(left / 1000)} s left${u.gate ? `; last gate: ${u.gate}` : ''}`;
    }
    case 'completing': return `${head}: all traffic on ${u.toColor}; stopping ${u.fromColor}'s containers${u.gate ? `; last gate: ${u.gate}` : ''}`;
    case 'completed': return `${head}: completed; ${u.fromColor}'s containers are stopped (\`--finish\` removes them, \`--rollback\` returns to them)`;
    case 'rolling-back': return `${head}: rolling back: ${u.reason}`;
    case 'rolled-back': return `${head}: rolled back: ${u.reason}; ${u.toColor}'s clones are stopped for inspection${u.gate ? ` (last gate: ${u.gate})` : ''}`;
    case 'failed': return `${head}: failed before anything started: ${u.reason}`;
    case 'finishing': return `${head}: removing ${u.fromColor}'s old containers`;
    case 'finished': return `${head}: finished; ${u.fromColor}'s old containers are removed`;
    case 'reverting': return `${head}: starting ${u.fromColor}'s containers again to roll back`;
  }
}
