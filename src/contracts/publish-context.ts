/**
 * publish_context: Cinder's connection_info, flat string keys, never a secret
 * (VolumeAttachment status is readable cluster-wide).
 */
export type PublishContext =
  | { transport: 'local'; path: string }
  | { transport: 'iscsi'; portals: string[]; iqn: string; lun: number }
  | { transport: 'fc'; wwns: string[]; lun: number };

export class PublishContextError extends Error {}

export function encodePublishContext(c: PublishContext): Record<string, string> {
  switch (c.transport) {
    case 'local':
      return { transport: 'local', path: c.path };
    case 'iscsi':
      return { transport: 'iscsi', portals: c.portals.join(','), iqn: c.iqn, lun: String(c.lun) };
    case 'fc':
      return { transport: 'fc', wwns: c.wwns.join(','), lun: String(c.lun) };
  }
}

function lunOf(raw: string | undefined): number {
  if (raw === undefined || !/^\d{1,5}$/.test(raw)) throw new PublishContextError(`publish_context.lun "${raw ?? ''}" is not a LUN number`);
  return Number(raw);
}

function listOf(raw: string | undefined, key: string): string[] {
  const items = (raw ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  if (items.length === 0) throw new PublishContextError(`publish_context.${key} is missing or empty`);
  return items;
}

export function decodePublishContext(ctx: Record<string, string> | undefined): PublishContext {
  const c = ctx ?? {};
  switch (c.transport) {
    case 'local': {
      if (!c.path || !c.path.startsWith('/')) throw new PublishContextError('publish_context.path must be an absolute path');
      return { transport: 'local', path: c.path };
    }
    case 'iscsi':
      if (!c.iqn) throw new PublishContextError('publish_context.iqn is missing');
      return { transport: 'iscsi', portals: listOf(c.portals, 'portals'), iqn: c.iqn, lun: lunOf(c.lun) };
    case 'fc':
      return { transport: 'fc', wwns: listOf(c.wwns, 'wwns').map((w) => w.toLowerCase().replace(/^0x/, '')), lun: lunOf(c.lun) };
    default:
      throw new PublishContextError(`publish_context.transport "${c.transport ?? ''}" is not one of local, iscsi, fc`);
  }
}
