/**
 * Files and directories root may trust. `enforce` and the agent's guard
 * load a policy into the kernel as root, so whoever can change the file, or
 * rename an entry on the way to it, chooses what every chroot(2) of the
 * host is allowed to do; the agent's config names what it writes as root,
 * and its output directory is where it creates files (see
 * {@link checkTrustedDirectory} for that one's rules). The threat model is any local user: a file is
 * trusted only when nobody but root (or the user this process runs as,
 * who could load a policy anyway) can change what the path leads to.
 * The rules are sshd's `StrictModes` and sudo's check of sudoers, with the
 * sticky-directory exception of `/tmp`:
 *
 * - every component of the path, from `/` on (a relative path from the
 *   working directory, whose own path is walked too), each directory, each
 *   symbolic link and the file itself, is owned by root (or this process's
 *   effective uid);
 * - no directory on the way is writable by its group or by others, unless
 *   it is sticky (`/tmp`): there only an entry's owner can rename or remove
 *   it, and every entry used is root's by the first rule;
 * - the file is not writable by its group or by others (an ACL granting
 *   another user write shows as group write in the mode);
 * - a symbolic link is followed by reading it (`readlink`) and walking its
 *   target the same way: its own mode means nothing, its owner and its
 *   directory do.
 *
 * Group write is refused even for gid 0: members of group root are users
 * other than root.
 *
 * Race-free: each directory is judged before anything inside it is looked
 * at, and a judged directory can only be changed by root; the file is
 * judged with lstat before it is opened (so a FIFO or device of another
 * user is never opened), opened without following a symbolic link, and
 * judged again on the opened descriptor (fstat), which must be the inode
 * that was judged; what is parsed is read from that descriptor.
 * @internal
 * @module
 */
import { closeSync, constants, fstatSync, lstatSync, mkdirSync, openSync, readlinkSync, type Stats } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { UnsafePolicyFileError } from './types.js';

/** Most symbolic links followed on one path: the kernel's MAXSYMLINKS. */
const MAX_LINKS = 40;

/** A file opened by {@link openTrustedFile}. */
export interface TrustedFile {
  /** The descriptor, open for reading; the caller closes it. */
  readonly fd: number;
  /** fstat of `fd`. */
  readonly stat: Stats;
  /** The file's path with every symbolic link resolved (absolute). */
  readonly path: string;
}

/** `path` for a shell command line: as it is when it needs no quoting, else in single quotes. */
function shellWord(path: string): string {
  return /^[\w@%+=:,./-]+$/.test(path) ? path : `'${path.replace(/'/g, `'\\''`)}'`;
}

type Kind = 'directory' | 'symbolic link' | 'file';

/**
 * Which writers a check refuses. Policy files: any but root (or this
 * process's user), a sticky directory's creators included. An output
 * directory ({@link checkTrustedDirectory}): its group is the administrator's choice
 * on the way (Ubuntu gives /var/log to group syslog, for the log
 * daemon), so group write is allowed there; others' write is not, unless
 * sticky; and the directory the files are created in is root's alone.
 */
export interface TrustRules {
  /** Group write on a component is refused. */
  readonly groupWrite: boolean;
  /** A sticky directory's write bits are no fault (its entries are judged one by one). */
  readonly stickyIsEnough: boolean;
  /**
   * The remedy for a shared directory (sticky, or written by its group)
   * refused for its write bits, in place of `chmod`: `/tmp` or Ubuntu's
   * `/var/log` are shared on purpose, and taking write from their users
   * would break the host.
   */
  readonly sharedFix?: string;
}

/** The rules for a policy file and the path to it. */
const POLICY_RULES: TrustRules = { groupWrite: true, stickyIsEnough: true };

/**
 * Why `st` (the component `path`, a `kind`) lets a user other than root
 * change the file, by `rules`, with the commands that fix it; undefined
 * when it does not.
 */
export function untrustedBecause(path: string, st: Stats, kind: Kind, euid: number = process.geteuid?.() ?? 0, rules: TrustRules = POLICY_RULES): string | undefined {
  const wrong: string[] = [];
  const fix: string[] = [];
  if (st.uid !== 0 && st.uid !== euid) {
    wrong.push(`is owned by uid ${st.uid}, ${euid === 0 ? 'not root' : `neither root nor uid ${euid} (this process)`}`);
    fix.push(`chown ${kind === 'symbolic link' ? '-h ' : ''}root: ${shellWord(path)}`);
  }
  const write = st.mode & (rules.groupWrite ? 0o022 : 0o002);
  const sticky = rules.stickyIsEnough && kind === 'directory' && (st.mode & 0o1000) !== 0; // S_ISVTX, the sticky bit
  if (kind !== 'symbolic link' && write && !sticky) {
    wrong.push(`is writable by ${write === 0o022 ? 'its group and others' : write & 0o020 ? `its group (gid ${st.gid})` : 'others'}`);
    const shared = kind === 'directory' && ((st.mode & 0o1000) !== 0 || write === 0o020);
    fix.push(shared && rules.sharedFix ? rules.sharedFix : `chmod ${write === 0o002 ? 'o' : 'go'}-w ${shellWord(path)}`);
  }
  if (!wrong.length) return undefined;
  const mode = kind === 'symbolic link' ? '' : `, mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')}`;
  return `${path} (a ${kind}, owner uid ${st.uid}, gid ${st.gid}${mode}) ${wrong.join(' and ')}: ${fix.join('; ')}`;
}

/** How a walk judges a component (`last`: the path ends with it); throws when another user could change it. */
type Judge = (path: string, st: Stats, kind: Kind, last: boolean) => void;

/**
 * Walks `file` from `/` by the module's rules, following symbolic links
 * itself and judging each component before anything inside it is looked
 * at, up to the last one, which must be a `want`. Returns that one's path
 * (links resolved) and lstat; a file is judged too, a directory is.
 */
function walk(file: string, want: 'file' | 'directory', judge: Judge, cannotRead: (message: string) => Error): { path: string; st: Stats } {
  const stat = (path: string): Stats => {
    try {
      return lstatSync(path);
    } catch (err) {
      throw cannotRead((err as Error).message);
    }
  };
  const parts = (p: string) => p.split('/').filter((c) => c !== '' && c !== '.');
  // The working directory's path is the kernel's (getcwd): no links in it.
  const todo = parts(file.startsWith('/') ? file : `${process.cwd()}/${file}`);
  let at = '/';
  let atStat = stat('/');
  judge('/', atStat, 'directory', todo.length === 0);
  let links = 0;
  while (todo.length) {
    const name = todo.shift()!;
    if (name === '..') {
      // `at` has no symbolic links: its parent by name is its parent.
      at = at.slice(0, at.lastIndexOf('/')) || '/';
      atStat = stat(at);
      continue;
    }
    const path = at === '/' ? `/${name}` : `${at}/${name}`;
    const st = stat(path);
    if (st.isSymbolicLink()) {
      judge(path, st, 'symbolic link', false);
      if (++links > MAX_LINKS) throw cannotRead(`more than ${MAX_LINKS} symbolic links on the way (ELOOP)`);
      let target: string;
      try {
        target = readlinkSync(path);
      } catch (err) {
        throw cannotRead((err as Error).message);
      }
      todo.unshift(...parts(target));
      if (target.startsWith('/')) {
        at = '/';
        atStat = stat('/');
      }
      continue;
    }
    if (st.isDirectory()) {
      judge(path, st, 'directory', todo.length === 0);
      at = path;
      atStat = st;
      continue;
    }
    if (todo.length || want === 'directory') throw cannotRead(`ENOTDIR: not a directory, ${path}`);
    judge(path, st, 'file', true);
    return { path, st };
  }
  if (want === 'file') throw cannotRead('it is a directory');
  return { path: at, st: atStat };
}

/**
 * A {@link Judge} that throws {@link UnsafePolicyFileError} for `file`:
 * by `rules`, and the last component by `lastRules`.
 */
function judgeFor(file: string, rules: TrustRules, lastRules: TrustRules = rules): Judge {
  const euid = process.geteuid?.() ?? 0;
  return (path, st, kind, last) => {
    const why = untrustedBecause(path, st, kind, euid, last ? lastRules : rules);
    if (why) throw new UnsafePolicyFileError(file, path, why);
  };
}

/**
 * Opens `file` for reading if only root can change it (see the module's
 * rules), walking its path from `/` and following symbolic links itself.
 * @param cannotRead Makes the error for a path that cannot be walked or
 * opened (missing, not a directory, a directory at the end, a loop of
 * links), from the system's message.
 * @throws {UnsafePolicyFileError} `UNSAFE_POLICY_FILE`, naming the first
 * component at fault.
 */
export function openTrustedFile(file: string, cannotRead: (message: string) => Error): TrustedFile {
  const judge = judgeFor(file, POLICY_RULES);
  const { path, st } = walk(file, 'file', judge, cannotRead);
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NOCTTY);
  } catch (err) {
    throw cannotRead((err as Error).message);
  }
  try {
    const opened = fstatSync(fd);
    // Only root can replace an entry of a judged directory: this holds
    // unless root did so in between.
    if (opened.dev !== st.dev || opened.ino !== st.ino) throw cannotRead(`${path} was replaced while it was opened`);
    judge(path, opened, 'file', true);
    return { fd, stat: opened, path };
  } catch (err) {
    closeSync(fd);
    throw err;
  }
}

/** How {@link checkTrustedDirectory} treats a directory that does not exist yet. */
export interface MissingDirectory {
  /** `'allow'`: fine when its parent is trusted (only a trusted user could create it); `'create'`: create it, 0700, then judge it. */
  readonly missing: 'allow' | 'create';
}

/**
 * Checks that no user but root (or this process's user) can add, rename or
 * remove entries of the directory `dir`, and that on the way to it only
 * root, members of a group the administrator gave write, and, in a sticky
 * directory, nobody but an entry's owner can: for a directory root creates
 * files in, so that no other user can plant a symbolic link, a hard link
 * or a file of their own at a name root then opens or rotates to. `dir`
 * itself is root's alone: a sticky bit does not keep another user from
 * creating a name first, and a group's members are other users.
 * @param cannotRead Makes the error for a path that cannot be walked
 * (missing, not a directory, a loop of links), from the system's message.
 * @param sharedFix The remedy when `dir` is a shared directory (sticky or
 * group-writable), e.g. to make a directory of its own.
 * @param options Without it, a missing `dir` is `cannotRead`'s error.
 * @returns The directory's path with every symbolic link resolved.
 * @throws {UnsafePolicyFileError} `UNSAFE_POLICY_FILE` (`file` is `dir`),
 * naming the first component at fault.
 */
export function checkTrustedDirectory(dir: string, cannotRead: (message: string) => Error, sharedFix?: string, options?: MissingDirectory): string {
  const onTheWay: TrustRules = { groupWrite: false, stickyIsEnough: true };
  const own: TrustRules = { groupWrite: true, stickyIsEnough: false, ...(sharedFix ? { sharedFix } : {}) };
  const judge = judgeFor(dir, onTheWay, own);
  const abs = resolve(dir);
  if (options && abs !== '/') {
    // The parent first: once it is judged, only a trusted user can create
    // the name, and whatever is there then is judged below.
    const parent = walk(dirname(abs), 'directory', judgeFor(dir, onTheWay), cannotRead).path;
    const name = `${parent === '/' ? '' : parent}/${basename(abs)}`;
    if (!lstatOrUndefined(name)) {
      if (options.missing === 'allow') return name;
      try {
        mkdirSync(name, { mode: 0o700 });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw cannotRead((err as Error).message);
      }
    }
  }
  const { path, st } = walk(dir, 'directory', judge, cannotRead);
  // Again, for a path that ends in `..` (its last directory was judged on the way).
  judge(path, st, 'directory', true);
  return path;
}

/** lstat of `path`, or undefined when there is nothing there (or it cannot be looked at: the walk then says why). */
function lstatOrUndefined(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch {
    return undefined;
  }
}
