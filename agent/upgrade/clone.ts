// A container cloned onto a new image through the Docker API: the same configuration (env,
// command, mounts, networks, restart policy, resources, labels) with the new image and the new
// color. What the old container inherited from its old image (env, command, labels, workdir,
// user, health check) is left for the new image to give, as `docker run` would.
import Docker from 'dockerode';
import type { UpgradeClone } from '../../api/types.js';

/** Marks a clone with what it was cloned from (not `corral.*`: those are read as endpoint labels). */
export const CLONE_OF_LABEL = 'corral-upgrade.clone-of';

export class CloneError extends Error {}

type Inspect = Docker.ContainerInspectInfo;

export class Cloner {
  constructor(private readonly docker: Docker) {}

  /** '' when the image is on this host, else one line saying it is not. */
  async imageProblem(image: string, node: string): Promise<string> {
    try {
      await this.docker.getImage(image).inspect();
      return '';
    } catch (err) {
      const e = err as { statusCode?: number; message?: string };
      if (e.statusCode === 404) return `image ${image} is not on host ${node}; pull or load it there first (docker pull / docker load), then run the upgrade again`;
      return `cannot ask Docker on host ${node} about image ${image}: ${e.message ?? String(err)}`;
    }
  }

  /** The clone's name: "web1-blue" -> "web1-green", "web1" -> "web1-green". */
  static cloneName(oldName: string, fromColor: string, toColor: string): string {
    const base = oldName.replace(/^\//, '');
    return base.endsWith(`-${fromColor}`) ? `${base.slice(0, -fromColor.length)}${toColor}` : `${base}-${toColor}`;
  }

  /** Creates and starts the clone of `oldId`; a clone left by an earlier try (an agent restart) is reused. */
  async clone(oldId: string, image: string, fromColor: string, toColor: string): Promise<UpgradeClone> {
    const old = await this.docker.getContainer(oldId).inspect();
    const oldName = old.Name.replace(/^\//, '');
    const cloneName = Cloner.cloneName(oldName, fromColor, toColor);
    const existing = await this.docker.getContainer(cloneName).inspect().catch(() => undefined);
    if (existing) {
      if (existing.Config.Labels?.[CLONE_OF_LABEL] !== old.Id) throw new CloneError(`a container named ${cloneName} exists and is not a clone of ${oldName}; remove or rename it, or pick another color with --color`);
      if (!existing.State.Running) await this.docker.getContainer(existing.Id).start();
      return { oldId: old.Id, oldName, cloneId: existing.Id, cloneName };
    }
    const oldImage = await this.docker.getImage(old.Image).inspect().catch(() => undefined);
    const { create, more } = cloneSpec(old, oldImage?.Config, image, toColor, cloneName);
    const c = await this.docker.createContainer(create);
    try {
      // API 1.41 creates with one network; the others are joined before the start.
      for (const [net, cfg] of more) await this.docker.getNetwork(net).connect({ Container: c.id, EndpointConfig: cfg });
      await c.start();
    } catch (err) {
      await c.remove({ force: true }).catch(() => undefined);
      throw new CloneError(`cloning ${oldName} onto ${image}: ${(err as Error).message}`);
    }
    return { oldId: old.Id, oldName, cloneId: c.id, cloneName };
  }

  async stop(id: string, graceS: number): Promise<void> {
    await this.docker.getContainer(id).stop({ t: graceS }).catch((err: { statusCode?: number }) => {
      if (err.statusCode !== 304 && err.statusCode !== 404) throw err; // already stopped, or gone
    });
  }

  async start(id: string): Promise<void> {
    await this.docker.getContainer(id).start().catch((err: { statusCode?: number }) => {
      if (err.statusCode !== 304) throw err; // already running
    });
  }

  async remove(id: string): Promise<void> {
    await this.docker.getContainer(id).remove({ force: true, v: false }).catch((err: { statusCode?: number }) => {
      if (err.statusCode !== 404) throw err;
    });
  }
}

type ImageConfig = { Env?: string[]; Cmd?: string[]; Entrypoint?: string[] | string; WorkingDir?: string; User?: string; Labels?: Record<string, string> | null; Healthcheck?: unknown } | undefined;

const same = (a: unknown, b: unknown) => JSON.stringify(a ?? null) === JSON.stringify(b ?? null);

/** The create options of the clone, and the networks to join after creating it. */
export function cloneSpec(old: Inspect, oldImage: ImageConfig, image: string, toColor: string, name: string): { create: Docker.ContainerCreateOptions; more: Array<[string, Docker.EndpointSettings]> } {
  const cfg = old.Config;
  const imgEnv = new Set(oldImage?.Env ?? []);
  const imgLabels = oldImage?.Labels ?? {};
  const labels: Record<string, string> = {};
  for (const [k, v] of Object.entries(cfg.Labels ?? {})) if (imgLabels[k] !== v) labels[k] = v;
  labels['corral.color'] = toColor;
  labels[CLONE_OF_LABEL] = old.Id;
  const host: Docker.HostConfig = { ...(old.HostConfig as Docker.HostConfig) };
  // Host ports stay with the old container (both run at once); the LB is the way in.
  delete host.PortBindings;
  host.PublishAllPorts = false;
  const mode = host.NetworkMode ?? 'default';
  const networks = Object.entries(old.NetworkSettings.Networks ?? {});
  const endpoint = (n: Docker.EndpointSettings): Docker.EndpointSettings => ({
    // Aliases Docker made from the old container's id name that container only; static addresses would collide.
    Aliases: (n.Aliases ?? []).filter((a) => !old.Id.startsWith(a)),
    Links: n.Links ?? undefined,
    DriverOpts: n.DriverOpts ?? undefined,
  });
  const first = networks.find(([net]) => net === mode) ?? (mode === 'default' ? networks.find(([net]) => net === 'bridge') : undefined);
  const shared = mode === 'host' || mode === 'none' || mode.startsWith('container:');
  const create: Docker.ContainerCreateOptions = {
    name,
    Image: image,
    Env: (cfg.Env ?? []).filter((e) => !imgEnv.has(e)),
    Cmd: same(cfg.Cmd, oldImage?.Cmd) ? undefined : cfg.Cmd,
    Entrypoint: same(cfg.Entrypoint, oldImage?.Entrypoint) ? undefined : (cfg.Entrypoint as string[] | undefined),
    WorkingDir: cfg.WorkingDir && cfg.WorkingDir !== oldImage?.WorkingDir ? cfg.WorkingDir : undefined,
    User: cfg.User && cfg.User !== oldImage?.User ? cfg.User : undefined,
    Healthcheck: same(cfg.Healthcheck, oldImage?.Healthcheck) ? undefined : cfg.Healthcheck,
    Labels: labels,
    ExposedPorts: cfg.ExposedPorts,
    StopSignal: (cfg as { StopSignal?: string }).StopSignal,
    Tty: cfg.Tty,
    OpenStdin: cfg.OpenStdin,
    HostConfig: host,
    NetworkingConfig: first && !shared ? { EndpointsConfig: { [first[0]]: endpoint(first[1]) } } : undefined,
  };
  const more = shared ? [] : networks.filter((n) => n !== first).map(([net, n]): [string, Docker.EndpointSettings] => [net, endpoint(n)]);
  return { create, more };
}
