// The iscsi overlay's tgtd container stops through its preStop hook: tgtd
// ignores SIGTERM, so without the hook the pod would take its whole grace
// period to stop. The hook's own text, rendered with the real
// `kubectl kustomize`, runs here against a real tgtd that has two targets and
// an initiator logged in (qemu-nbd's libiscsi session).
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { container, render, workload } from '../deploy/k8s.js';
import { tempDir } from '../helpers/scratch-fs.js';
import { requireIscsiTools, TestTgtd } from '../helpers/tgtd.js';

const IQN = 'iqn.2026-12.io.sinter.test:prestop';

describe('overlays/iscsi: the tgtd container’s preStop hook stops a real tgtd that has targets and a logged-in initiator', () => {
  const t = tempDir('sinter-tgtd-prestop-');
  let tgtd: TestTgtd;
  let initiator: ResultPromise | undefined;

  const tgtadm = (...args: string[]) => execa('tgtadm', ['-C', String(tgtd.controlPort), ...args]);

  beforeAll(async () => {
    requireIscsiTools();
    tgtd = await TestTgtd.start();
    for (const tid of [1, 2]) {
      const img = join(t.dir, `lun${tid}.img`);
      writeFileSync(img, Buffer.alloc(0));
      await execa('truncate', ['-s', '16M', img]);
      await tgtadm('--lld', 'iscsi', '--op', 'new', '--mode', 'target', '--tid', String(tid), '--targetname', `${IQN}-${tid}`);
      await tgtadm('--lld', 'iscsi', '--op', 'new', '--mode', 'logicalunit', '--tid', String(tid), '--lun', '1', '--backing-store', img);
      await tgtadm('--lld', 'iscsi', '--op', 'bind', '--mode', 'target', '--tid', String(tid), '--initiator-address', 'ALL');
    }
    // A session that stays logged in while qemu-nbd runs.
    const sock = join(t.dir, 'nbd.sock');
    initiator = execa(
      'qemu-nbd',
      ['--image-opts', `driver=iscsi,transport=tcp,portal=${tgtd.portal},target=${IQN}-1,lun=1,initiator-name=${IQN}:node`, '--socket', sock, '--persistent'],
      { reject: false, cleanup: true },
    );
    for (let i = 0; ; i++) {
      const show = (await tgtadm('--lld', 'iscsi', '--op', 'show', '--mode', 'target')).stdout;
      if (show.includes(`Initiator: ${IQN}:node`)) break;
      if (i > 100) throw new Error(`the initiator never logged in:\n${show}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  });

  afterAll(async () => {
    initiator?.kill('SIGKILL');
    await initiator;
    await tgtd?.stop();
    t.cleanup();
  });

  it('runs to completion and tgtd exits at once, its targets and the session gone', async () => {
    const pod = workload(render('overlays/iscsi'), 'Deployment/sinter-controller').pod;
    const hook = container(pod, 'tgtd').lifecycle?.preStop?.exec?.command;
    expect(hook, 'the tgtd container has a preStop exec hook').toBeDefined();
    // The hook's tgtadm talks to the pod's tgtd (the default control socket); here, to this test's.
    const bin = join(t.dir, 'bin');
    mkdirSync(bin, { recursive: true });
    writeFileSync(join(bin, 'tgtadm'), `#!/bin/sh\nexec /usr/sbin/tgtadm -C ${tgtd.controlPort} "$@"\n`);
    chmodSync(join(bin, 'tgtadm'), 0o755);
    const [cmd, ...args] = hook!;
    const started = performance.now();
    const r = await execa(cmd, args, { reject: false, env: { PATH: `${bin}:/usr/sbin:/usr/bin:/sbin:/bin` }, timeout: 30_000 });
    expect(r.exitCode, `${r.stdout}\n${r.stderr}`).toBe(0);
    const proc = tgtd.proc!;
    const exited = await Promise.race([proc.then(() => true), new Promise<boolean>((res) => setTimeout(() => res(false), 5000))]);
    expect(exited, `tgtd still runs 5 s after the hook; its log:\n${tgtd.lastLog()}`).toBe(true);
    // Well inside any grace period (the default is 30 s).
    expect(performance.now() - started).toBeLessThan(10_000);
  });
});
