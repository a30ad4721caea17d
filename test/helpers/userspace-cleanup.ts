import { readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';

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
