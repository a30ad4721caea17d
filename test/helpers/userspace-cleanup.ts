import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { scrub } from './sinter-process.js';

/**
 * Last-resort cleanup for user-space iSCSI attachments under `stateDir`, for
 * afterAll hooks: whatever a failed test left (loop devices backed by our FUSE
 * files, FUSE mounts, qemu-nbd and nbdfuse processes) is removed, by the pids
 * and paths recorded there only.
 */
export async function forceCleanupUserspace(stateDir: string): Promise<string[]> {
  const done: string[] = [];
  let dirs: string[] = [];
  try {
    dirs = readdirSync(stateDir).map((d) => join(stateDir, d));
  } catch {
    return done;
  }
  for (const dir of dirs) {
    const file = join(dir, 'mnt', 'disk');
    for (const n of readdirSync('/sys/block').filter((x) => x.startsWith('loop'))) {
      let back = '';
      try {
        back = readFileSync(`/sys/block/${n}/loop/backing_file`, 'utf8').trim();
      } catch {
        continue;
      }
      if (back === file) {
        await execa('losetup', ['-d', `/dev/${n}`], { reject: false });
        done.push(`/dev/${n}`);
      }
    }
    const r = await execa('fusermount3', ['-u', '-z', join(dir, 'mnt')], { reject: false });
    if (r.exitCode === 0) done.push(join(dir, 'mnt'));
    for (const pf of ['nbdfuse.pid', 'qemu-nbd.pid']) {
      let pid = 0;
      try {
        pid = Number(readFileSync(join(dir, pf), 'utf8').trim());
      } catch {
        continue;
      }
      try {
        if (pid > 1 && readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(dir)) {
          process.kill(pid, 'SIGKILL');
          done.push(`pid ${pid}`);
        }
      } catch {
        // gone
      }
    }
  }
  await new Promise((r) => setTimeout(r, 200));
  rmSync(stateDir, { recursive: true, force: true });
  return done;
}

/** Writes `dir/owner` with this process's pid: sweepAbandonedTestDirs takes the dir for abandoned once that process is gone. */
export function markOwner(dir: string): void {
  writeFileSync(join(dir, 'owner'), String(process.pid));
}

function ownerAlive(dir: string): boolean {
  let pid = 0;
  try {
    pid = Number(readFileSync(join(dir, 'owner'), 'utf8').trim());
  } catch {
    // No owner file: a dir being set up right now, or one of a version that wrote none. Left alone.
    return true;
  }
  if (!Number.isInteger(pid) || pid <= 1) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Processes whose command line names a path under dir (sinter, qemu-nbd, nbdfuse started for that test dir). */
function processesUnder(dir: string): number[] {
  const out: number[] = [];
  for (const p of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      if (Number(p) !== process.pid && readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').some((a) => a.includes(`${dir}/`))) out.push(Number(p));
    } catch {
      // gone
    }
  }
  return out;
}

/**
 * Takes down everything a test made under its dir. First every process still
 * naming the dir (sinter, qemu-nbd, nbdfuse): an attachment whose cluster is
 * gone never answers, and an unmount over it would wait in the kernel for good
 * (seen: umount -l in D state, ext4's journal commit stuck on the loop device);
 * with the FUSE daemon gone its I/O fails at once. Then the user-space
 * attachments under each of `userspaceStateDirs` (loop devices on their FUSE
 * files, the FUSE mounts, by recorded pids), then every mount under dir and the
 * loop devices backed by files under it (scrub), and the dir. Nothing outside
 * dir is matched: a loop device is detached only when its backing file is one
 * of this dir's files.
 */
export async function teardownTestDir(dir: string, userspaceStateDirs: string[] = []): Promise<void> {
  for (const pid of processesUnder(dir)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  await new Promise((r) => setTimeout(r, 200));
  for (const s of userspaceStateDirs) await forceCleanupUserspace(s);
  await scrub(dir);
  rmSync(dir, { recursive: true, force: true });
}

/**
 * The dirs `<tmpdir>/<prefix>*` of earlier runs of a test that were killed
 * before their afterAll (their owner pid is gone): torn down as
 * teardownTestDir does. Returns the dirs swept.
 */
export async function sweepAbandonedTestDirs(prefix: string, userspaceStateDirs: (dir: string) => string[] = () => []): Promise<string[]> {
  const swept: string[] = [];
  for (const name of readdirSync(tmpdir()).filter((n) => n.startsWith(prefix))) {
    const dir = join(tmpdir(), name);
    if (ownerAlive(dir)) continue;
    await teardownTestDir(dir, userspaceStateDirs(dir));
    swept.push(dir);
  }
  return swept;
}
