import type { BackendCapacity } from '../backend.js';

export interface ThinPoolFigures {
  /** `vg/pool`, for messages. */
  pool: string;
  sizeBytes: number;
  dataPercent: number;
  metadataPercent: number;
  /** Virtual sizes of every thin LV in the pool (Cinder's provisioned capacity). */
  provisionedBytes: number;
  ratio: number;
  reservedPercent: number;
  highWaterPercent: number;
}

/** Why a thin pool takes no new volumes, or undefined while it is under its high-water mark. */
export function poolPastHighWater(f: Pick<ThinPoolFigures, 'pool' | 'dataPercent' | 'metadataPercent' | 'highWaterPercent'>): string | undefined {
  const over = (['data', 'metadata'] as const).filter((k) => (k === 'data' ? f.dataPercent : f.metadataPercent) >= f.highWaterPercent);
  if (over.length === 0) return undefined;
  const shown = over.map((k) => `${k} ${(k === 'data' ? f.dataPercent : f.metadataPercent).toFixed(2)}%`).join(', ');
  return `thin pool ${f.pool} is past its high-water mark (${shown} used, thinPoolHighWaterPercent ${f.highWaterPercent}): extend the pool (lvextend) or free space before creating volumes`;
}

/**
 * Cinder's thin-provisioning arithmetic (cinder/scheduler/host_manager +
 * the LVM driver's stats): virtual room is pool size × ratio minus what is
 * provisioned and reserved; nothing while the physically free part is
 * within the reserve, or while the pool is past its high-water mark.
 */
export function thinCapacity(f: ThinPoolFigures): BackendCapacity {
  const used = Math.ceil((f.sizeBytes * f.dataPercent) / 100);
  const physicalFreeBytes = Math.max(0, f.sizeBytes - used);
  const reserved = Math.floor((f.sizeBytes * f.reservedPercent) / 100);
  const virtualFree = Math.floor(f.sizeBytes * f.ratio) - f.provisionedBytes - reserved;
  const note = poolPastHighWater(f);
  const availableBytes = note || physicalFreeBytes <= reserved ? 0 : Math.max(0, virtualFree);
  return { totalBytes: f.sizeBytes, physicalFreeBytes, provisionedBytes: f.provisionedBytes, availableBytes, ...(note ? { note } : {}) };
}

/** Thick: what the volume group has free, less the reserve; no over-subscription. */
export function thickCapacity(f: { vgSizeBytes: number; vgFreeBytes: number; provisionedBytes: number; reservedPercent: number }): BackendCapacity {
  const reserved = Math.floor((f.vgSizeBytes * f.reservedPercent) / 100);
  return { totalBytes: f.vgSizeBytes, physicalFreeBytes: f.vgFreeBytes, provisionedBytes: f.provisionedBytes, availableBytes: Math.max(0, f.vgFreeBytes - reserved) };
}
