// A process's /proc/PID/stat, for tests and benchmarks that look at process groups, sessions and
// CPU time.
import { readFileSync } from 'node:fs';

/**
 * The fields after "pid (comm) ", as numbers: [0] state (NaN), [1] ppid, [2] pgrp, [3] session,
 * … [11] utime, [12] stime (in clock ticks). The comm may hold spaces and parentheses, hence the
 * last ")". Throws when the process is gone.
 */
export function procStat(pid: number): number[] {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ').map(Number);
}

/** utime + stime of a process, in seconds (NaN when there is no such process). */
export function cpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return NaN;
  try {
    const f = procStat(pid);
    return (f[11]! + f[12]!) / 100; // USER_HZ is 100 on Linux
  } catch {
    return NaN;
  }
}

/** Resident set size of a process, in bytes, from /proc/PID/status (NaN when there is no such process). */
export function rssBytes(pid: number | undefined): number {
  if (pid === undefined) return NaN;
  try {
    const kb = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
    return kb === undefined ? NaN : Number(kb) * 1024;
  } catch {
    return NaN;
  }
}
