/**
 * Container attribution: the caller's cgroup path from its cgroup id, and
 * the container, its runtime and its Kubernetes pod from that path.
 *
 * The id comes from the kernel with every event
 * (`bpf_get_current_cgroup_id()`, the cgroup v2 kernfs node id). The path
 * is looked up in user space, once per id: the addon opens the cgroup's
 * directory from its kernfs file handle on the cgroup2 mount
 * (`open_by_handle_at(2)`) and reads the descriptor's path
 * (`crates/loader/src/cgroup.rs`). Ids are never reused within a boot, so
 * the answer is cached ({@link CGROUP_CACHE_ENTRIES}, least recently used
 * first out) and the event path makes no syscall for an id it has seen.
 * A cgroup removed before its first event was decoded cannot be looked up
 * any more: such events say so (`cgroupLookup: 'removed'`).
 *
 * The container comes from the path's names alone ({@link containerOf}),
 * as the runtimes and the kubelet name their cgroups: a best-effort label,
 * not an identity. Whoever may create cgroups picks their names: root, and
 * a user in a subtree delegated to them (a systemd user session, where
 * rootless Docker and Podman put their containers) can name one like any
 * runtime's.
 * @module
 */
import { displayBytes } from './events.js';
import { native } from './native.js';

/**
 * Cgroup ids whose lookup is kept: about 4,096 × 300 bytes. More distinct
 * cgroups than this making chroot calls in turn cost one lookup each time
 * they come back.
 */
export const CGROUP_CACHE_ENTRIES = 4096;

/**
 * How a cgroup id was looked up: `found` (the cgroup existed; `cgroupPath`
 * is set), `removed` (no cgroup had the id any more when the event was
 * decoded: it was removed after the call), `failed` (the lookup itself
 * failed: no cgroup2 mount in this mount namespace, no
 * CAP_DAC_READ_SEARCH, …; {@link cgroupLookupFailure} says why).
 */
export type CgroupLookup = 'found' | 'removed' | 'failed';

/**
 * The runtime a container's cgroup name points to: `containerd`
 * (`cri-containerd-ID.scope`, `…:cri-containerd:ID`), `cri-o`
 * (`crio-ID.scope`, `crio-ID`), `docker` (`docker-ID.scope`,
 * `/docker/ID`), `podman` (`libpod-ID.scope`, `libpod-ID`), or `unknown`:
 * a bare 64-hex-digit name, which containerd (the cgroupfs driver under
 * Kubernetes) and others use without naming themselves.
 */
export type ContainerRuntime = 'containerd' | 'cri-o' | 'docker' | 'podman' | 'unknown';

/** What a cgroup path says about a container ({@link containerOf}). */
export interface ContainerAttribution {
  /** The runtime, or null when the path names no container. */
  readonly containerRuntime: ContainerRuntime | null;
  /** The container id: 64 lowercase hex digits, or null. */
  readonly containerId: string | null;
  /**
   * The Kubernetes pod's uid (`8-4-4-4-12` hex digits, or 32 for a static
   * pod's hash), from a pod cgroup the kubelet made (`kubepods-…-podUID.slice`,
   * with `-` for the `_` systemd names take; or `/kubepods/…/podUID`); null
   * outside a pod.
   */
  readonly podUid: string | null;
}

/** Where an event's caller's cgroup is, and what that says about its container. */
export interface CgroupAttribution extends ContainerAttribution {
  /**
   * The caller's cgroup: its path in the cgroup v2 hierarchy (relative to
   * the hierarchy's root as this process's cgroup namespace sees it, `/`
   * for the root cgroup), display form as `path`; null unless
   * `cgroupLookup` is `found`.
   */
  readonly cgroupPath: string | null;
  /**
   * How `cgroupId` was looked up ({@link CgroupLookup}). Null only in events
   * read back from a recording made before chroot-guard recorded it.
   */
  readonly cgroupLookup: CgroupLookup | null;
}

const HEX64 = '[0-9a-f]{64}';
const POD_UID = /^(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})$/;

/** A container's cgroup name: its runtime and where its id is. */
const CONTAINER_NAMES: ReadonlyArray<readonly [RegExp, ContainerRuntime]> = [
  [new RegExp(`^cri-containerd-(${HEX64})\\.scope$`), 'containerd'],
  // containerd with the cgroupfs driver given a systemd-style parent.
  [new RegExp(`^[^:]*:cri-containerd:(${HEX64})$`), 'containerd'],
  [new RegExp(`^crio-(${HEX64})(?:\\.scope)?$`), 'cri-o'],
  [new RegExp(`^docker-(${HEX64})\\.scope$`), 'docker'],
  [new RegExp(`^libpod-(?:payload-)?(${HEX64})(?:\\.scope)?$`), 'podman'],
];
const BARE_ID = new RegExp(`^${HEX64}$`);
/** A pod's slice as the kubelet's systemd driver names it: `[PREFIX-]kubepods[-QOS]-podUID.slice`, the uid's `-` as `_`. */
const POD_SLICE = /^(?:[^/]*-)?kubepods(?:-[a-z]+)?-pod([0-9a-f_]+)\.slice$/;
/** A pod's cgroup as the kubelet's cgroupfs driver names it, under a `kubepods` cgroup. */
const POD_DIR = /^pod([0-9a-f-]+)$/;

const NO_CONTAINER: ContainerAttribution = Object.freeze({ containerRuntime: null, containerId: null, podUid: null });

/** The attribution of a task without a cgroup id (no cgroup2 file system mounted): a lookup that could not be made. @internal */
export const NO_CGROUP: CgroupAttribution = Object.freeze({ cgroupPath: null, cgroupLookup: 'failed', ...NO_CONTAINER });

/**
 * What a cgroup v2 path says about a container: the deepest name that is a
 * container's (so a container's own sub-cgroups, like systemd's
 * `init.scope` inside one, count as the container), and the pod cgroup
 * above it. Layouts: the kubelet's systemd driver
 * (`/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podUID.slice/cri-containerd-ID.scope`,
 * `…/crio-ID.scope`), its cgroupfs driver (`/kubepods/besteffort/podUID/ID`,
 * `/kubepods/podUID/ID`), Docker (`/system.slice/docker-ID.scope`,
 * `/docker/ID`) and Podman (`…/libpod-ID.scope`, `/libpod_parent/libpod-ID`),
 * below any prefix (a kubelet `--cgroup-root`, a nested container).
 * Conmon's cgroups (`crio-conmon-ID.scope`, `libpod-conmon-ID.scope`) hold
 * the runtime's monitor, not the container, and name none. Names only:
 * anyone who can create a cgroup can name it so (see the module's note).
 */
export function containerOf(path: string): ContainerAttribution {
  const parts = path.split('/');
  let runtime: ContainerRuntime | null = null;
  let id: string | null = null;
  let at = parts.length;
  for (let i = parts.length - 1; i >= 0 && id === null; i--) {
    const name = parts[i]!;
    for (const [re, r] of CONTAINER_NAMES) {
      const m = re.exec(name);
      if (m) {
        [runtime, id, at] = [r, m[1]!, i];
        break;
      }
    }
    if (id === null && BARE_ID.test(name)) [runtime, id, at] = [parts[i - 1] === 'docker' ? 'docker' : 'unknown', name, i];
  }
  let podUid: string | null = null;
  // From the container's own name (`PODSLICE:cri-containerd:ID` holds the
  // pod's slice name) up; from the deepest name when there is no container.
  for (let i = Math.min(at, parts.length - 1); i >= 0 && podUid === null; i--) {
    const name = parts[i]!.split(':', 1)[0]!;
    const slice = POD_SLICE.exec(name);
    const uid = slice ? slice[1]!.replaceAll('_', '-') : (POD_DIR.exec(name)?.[1] ?? null);
    if (uid !== null && POD_UID.test(uid) && (slice || parts.slice(0, i).some((p) => p.includes('kubepods')))) podUid = uid;
  }
  return id === null && podUid === null ? NO_CONTAINER : { containerRuntime: runtime, containerId: id, podUid };
}

/** The cache of lookups: Map order is use order, oldest first. */
const cache = new Map<bigint, CgroupAttribution>();
/** The last id looked up and its answer: a run of events from one cgroup skips the map. */
let lastId: bigint | undefined;
let lastAttribution: CgroupAttribution | undefined;
let failure: string | null = null;

/** Why the last `failed` lookup failed (a sentence with a remedy), or null when none has. */
export function cgroupLookupFailure(): string | null {
  return failure;
}

/** Empties the cache (for tests: the next event of each id looks it up again). @internal */
export function clearCgroupCache(): void {
  cache.clear();
  lastId = lastAttribution = undefined;
}

/** Ids in the cache now (for tests: it never holds more than {@link CGROUP_CACHE_ENTRIES}). @internal */
export function cgroupCacheSize(): number {
  return cache.size;
}

/** Looks `id` up through the addon (two syscalls): uncached. @internal */
export function lookUpCgroup(id: bigint): CgroupAttribution {
  const r = native().cgroupPath(id);
  if (r.state === 'found' && r.path) {
    const cgroupPath = displayBytes(r.path);
    return Object.freeze({ cgroupPath, cgroupLookup: 'found', ...containerOf(cgroupPath) });
  }
  if (r.state !== 'removed') failure = r.reason ?? 'the cgroup lookup failed';
  return Object.freeze({ cgroupPath: null, cgroupLookup: r.state === 'removed' ? 'removed' : 'failed', ...NO_CONTAINER });
}

/**
 * The attribution of the cgroup `id` (an event's `cgroupId`): from the
 * cache, or looked up and cached ({@link CGROUP_CACHE_ENTRIES}). What the
 * event decoder calls for each event.
 * @internal
 */
export function cgroupAttribution(id: bigint): CgroupAttribution {
  if (id === lastId) return lastAttribution!;
  let a = cache.get(id);
  if (a) cache.delete(id);
  else {
    a = lookUpCgroup(id);
    if (cache.size >= CGROUP_CACHE_ENTRIES) cache.delete(cache.keys().next().value!);
  }
  cache.set(id, a);
  lastId = id;
  lastAttribution = a;
  return a;
}
