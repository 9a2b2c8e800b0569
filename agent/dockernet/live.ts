// Which Docker endpoints still exist: what `corral ipam gc` keeps. Asks Docker for every
// network of our driver and the endpoint of each container on it.
import Docker from 'dockerode';

export async function liveEndpoints(socketPath: string, driver: string): Promise<Set<string>> {
  const docker = new Docker({ socketPath });
  const live = new Set<string>();
  const nets = await docker.listNetworks({ filters: JSON.stringify({ driver: [driver] }) });
  for (const n of nets) {
    const info = (await docker.getNetwork(n.Id).inspect()) as { Containers?: Record<string, { EndpointID?: string }> };
    for (const c of Object.values(info.Containers ?? {})) if (c.EndpointID) live.add(c.EndpointID);
  }
  return live;
}
