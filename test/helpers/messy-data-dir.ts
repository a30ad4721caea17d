import { mkdirSync, promises as fs, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import type { VolumeRecord } from '../../src/backends/backend.js';
import { FileBackend } from '../../src/backends/file/backend.js';
import { newSnapshotId, newVolumeId } from '../../src/backends/ids.js';
import { HostExecutor } from '../../src/exec/run.js';
import { fileBackendConfig } from './backend-config.js';

const MiB = 1024 * 1024;
const log = pino({ level: 'silent' });
const exec = new HostExecutor({ mode: 'direct', hostRoot: '/', defaultTimeoutMs: 60_000 });
const mount = { accessType: 'mount' as const, accessMode: 'SINGLE_NODE_WRITER', fsType: 'ext4' };

/** A data directory with one of every case start-up distinguishes. */
export async function messyDataDir(dataDir: string) {
  const b = new FileBackend(fileBackendConfig('b1', dataDir), exec, log);
  await b.start();
  const vols = [];
  for (const name of ['ok', 'grown', 'lost-image', 'gone', 'small', 'not-a-file']) vols.push(await b.createVolume({ id: newVolumeId('b1'), name, sizeBytes: MiB, parameters: {}, capabilities: [mount] }));
  const [ok, grown, lostImage, gone, small, notAFile] = vols as [VolumeRecord, VolumeRecord, VolumeRecord, VolumeRecord, VolumeRecord, VolumeRecord];
  const snap = await b.createSnapshot({ id: newSnapshotId('b1'), name: 's1', sourceVolumeId: ok.id });
  const vd = join(dataDir, 'volumes');
  await fs.truncate(b.imagePath(grown.id), 4 * MiB); // an expand interrupted before its record
  await fs.rm(b.imagePath(lostImage.id));
  await fs.truncate(b.imagePath(small.id), MiB / 2);
  await fs.rm(b.imagePath(notAFile.id));
  mkdirSync(b.imagePath(notAFile.id));
  writeFileSync(join(vd, `${gone.id}.json`), JSON.stringify({ ...gone, state: 'deleting' }));
  const half = newVolumeId('b1');
  writeFileSync(join(vd, `${half}.json`), JSON.stringify({ ...gone, id: half, name: 'half', state: 'creating' }));
  writeFileSync(join(vd, `${half}.img`), '');
  writeFileSync(join(vd, `.${grown.id}.json.1234.tmp`), '{"trunc');
  writeFileSync(join(vd, `${newVolumeId('b1')}.json`), '{not json');
  const misnamed = newVolumeId('b1');
  writeFileSync(join(vd, `${misnamed}.json`), JSON.stringify({ ...ok, name: 'misnamed' })); // names another id
  writeFileSync(join(vd, `${newVolumeId('b1')}.img`), ''); // an orphan image
  writeFileSync(join(vd, 'notes.txt'), 'hello');
  const foreign = newVolumeId('b1');
  writeFileSync(join(vd, `${foreign}.json`), JSON.stringify({ ...ok, id: foreign, backend: 'other' }));
  mkdirSync(join(vd, `${newVolumeId('b1')}.json`)); // a record name that is a directory: unreadable
  return { snap };
}

