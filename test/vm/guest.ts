// Helpers for tests that run INSIDE the VM guest (*.vm.test.ts): the guest's
// system daemons a node host would have (iscsid), and checks of what is left.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { execa, type ResultPromise } from 'execa';

/** Throws unless this process runs in the test guest (a *.vm.test.ts file run on the host by mistake). */
export function requireGuest(): void {
  if (process.env.SINTER_IN_VM !== '1') throw new Error('this test runs only inside the VM guest: node test/vm/run.mjs --vitest <file>');
}

/** The guest's iSCSI initiator name (set by the guest recipe). */
export function initiatorName(): string {
  const m = /^InitiatorName=(\S+)/m.exec(readFileSync('/etc/iscsi/initiatorname.iscsi', 'utf8'));
  if (!m) throw new Error('/etc/iscsi/initiatorname.iscsi has no InitiatorName');
  return m[1];
}

/** The scratch disks the harness gave the guest (/dev/vdb …), by path. */
export function scratchDisks(): string[] {
  return readdirSync('/sys/block')
    .filter((d) => /^vd[b-z]$/.test(d))
    .sort()
    .map((d) => `/dev/${d}`);
}

/** iscsid in the foreground, owned by the test; stop() ends it (and waits). */
export class Iscsid {
  private stderr = '';
  private constructor(private proc: ResultPromise) {
    // What iscsid says about its logins and recoveries (it logs to stderr in the foreground): for failure messages.
    proc.stderr?.on('data', (d: Buffer) => {
      this.stderr = (this.stderr + d.toString()).slice(-20_000);
    });
  }

  /** The last of iscsid's log (up to 20,000 characters). */
  logs(): string {
    return this.stderr;
  }

  static async start(): Promise<Iscsid> {
    await execa('modprobe', ['iscsi_tcp']);
    // Its own process group: iscsid's shutdown sends SIGTERM to its whole group
    // (kill(0, SIGTERM) in open-iscsi's iscsid), which would otherwise be vitest's.
    const proc = execa('iscsid', ['-f'], { reject: false, stdin: 'ignore', stdout: 'ignore', stderr: 'pipe', cleanup: true, detached: true });
    const d = new Iscsid(proc);
    const until = Date.now() + 20_000;
    // iscsiadm answers 21 (no sessions) once iscsid listens; 20 while it does not.
    for (;;) {
      const r = await execa('iscsiadm', ['-m', 'session'], { reject: false });
      if (r.exitCode === 0 || r.exitCode === 21) return d;
      if (proc.exitCode !== null || Date.now() > until) {
        await d.stop();
        throw new Error(`iscsid did not start (iscsiadm exit ${r.exitCode}): ${r.stderr}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  get running(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  async stop(): Promise<void> {
    if (!this.running) return;
    this.proc.kill('SIGTERM');
    const done = await Promise.race([this.proc.then(() => true), new Promise((r) => setTimeout(() => r(false), 5000))]);
    if (!done) {
      this.proc.kill('SIGKILL');
      await this.proc;
    }
  }
}

/** The kernel's iSCSI sessions (iscsiadm -m session), as "portal,tpgt iqn" lines; [] when none. */
export async function kernelSessions(): Promise<string[]> {
  const r = await execa('iscsiadm', ['-m', 'session'], { reject: false });
  if (r.exitCode === 21) return [];
  if (r.exitCode !== 0) throw new Error(`iscsiadm -m session: exit ${r.exitCode}: ${r.stderr}`);
  return r.stdout
    .split('\n')
    .filter(Boolean)
    .map((l) => l.replace(/^tcp: \[\d+\] /, '').replace(/ \(non-flash\)$/, ''));
}

/** open-iscsi's node records (iscsiadm -m node), as "portal,tpgt iqn" lines; [] when none. */
export async function nodeRecords(): Promise<string[]> {
  const r = await execa('iscsiadm', ['-m', 'node'], { reject: false });
  if (r.exitCode === 21) return [];
  if (r.exitCode !== 0) throw new Error(`iscsiadm -m node: exit ${r.exitCode}: ${r.stderr}`);
  return r.stdout.split('\n').filter(Boolean);
}

/** SCSI disks (sd*) the kernel has. */
export function scsiDisks(): string[] {
  return readdirSync('/sys/block').filter((d) => /^sd[a-z]+$/.test(d));
}

export function moduleLoaded(name: string): boolean {
  return existsSync(`/sys/module/${name}`);
}
