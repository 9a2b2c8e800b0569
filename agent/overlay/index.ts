// Chooses the WireGuard implementation: the kernel module when it is there, wireguard-go otherwise.
import { KernelWireGuard } from './kernel.js';
import type { WireGuardDevice } from './overlay.js';
import { WireGuardGo } from './wireguard-go.js';

export async function wireGuardFor(choice: 'auto' | 'kernel' | 'wireguard-go', ifname: string, runDir: string): Promise<WireGuardDevice> {
  if (choice === 'kernel') return new KernelWireGuard();
  if (choice === 'wireguard-go') return new WireGuardGo(runDir);
  return (await KernelWireGuard.available(ifname)) ? new KernelWireGuard() : new WireGuardGo(runDir);
}
